"""The scripts under benchmarks/ import and parse their arguments against the current package,
so a rename inside src/ cannot leave them broken until someone next runs them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_imports_and_prints_its_help(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = _load(path)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_ablation_variants_combine_in_order() -> None:
    ablation = _load(BENCHMARKS / "gacd_ablation.py")
    distill, probe, aft = ablation.variant("T0.05+epochs60+probe_adv+aft_head")
    assert distill == ["method.temperature=0.05", "optim.epochs=60"]
    assert probe == ["method.adversarial=true"]
    assert aft == "head"
    with pytest.raises(SystemExit, match=r"unknown variant part 'T0\.3'"):
        ablation.variant("T0.3")
