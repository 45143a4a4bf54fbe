"""The scripts under benchmarks/ import and parse their arguments against the current package,
so a rename inside src/ cannot leave them broken until someone next runs them."""

from __future__ import annotations

import pytest

from conftest import BENCHMARKS, load_benchmark

STEMS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("stem", STEMS)
def test_script_imports_and_prints_its_help(stem: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_benchmark(stem)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_ablation_variants_combine_in_order() -> None:
    ablation = load_benchmark("gacd_ablation")
    distill, probe, aft = ablation.variant("T0.05+epochs60+probe_adv+aft_head")
    assert distill == ["method.temperature=0.05", "optim.epochs=60"]
    assert probe == ["method.adversarial=true"]
    assert aft == "head"
    with pytest.raises(SystemExit, match=r"unknown variant part 'T0\.3'"):
        ablation.variant("T0.3")
