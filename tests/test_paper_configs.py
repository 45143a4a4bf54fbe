"""Every configs/paper/*.yaml is valid and runs end to end, a step or two per stage, on
tiny files in the real CIFAR-10 / CIFAR-100 / STL-10 formats (tests/format_writers.py).

The paper's architectures stay (WRN-34-10 included): each stage trains one optimisation
step on a handful of random images, with one-step attacks. The experiments share one
stages directory, as the real paper runs do, so shared stages (the ResNet-18 teacher...)
run once. Every report must say the numbers are meaningless and not call them CIFAR.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from format_writers import write_cifar10, write_cifar100, write_stl10
from gacd.experiments import load_experiment, plan_experiment, run_experiment
from gacd.experiments.paper import PAPER

# The paper's experiments; zoo_teacher_*.yaml (RobustBench teachers) are not the paper's and
# are checked in test_zoo_configs.py.
PAPER_CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "configs" / "paper").glob("*.yaml")
    if not p.stem.startswith("zoo_")
)
NAMES = [p.stem for p in PAPER_CONFIGS]

# One optimisation step per stage: 5 training images, batch 5, no validation split.
SMOKE = [
    "smoke=true",
    "threads=1",
    "attacks=[natural,pgd2]",  # AutoAttack and CW-30 stay in the files, checked below
    "attacks_last=[natural]",
    "base.device=cpu",
    "base.progress=false",
    "base.data.download=false",
    "base.data.val_fraction=0.0",
    "force.data.batch_size=5",
    "force.data.eval_batch_size=8",
    "force.optim.epochs=1",
    "force.attack.steps=1",
    "force.eval.val_attack_steps=1",
    "stages.distill.method.ot_iterations=2",
]


def test_paper_configs_are_valid_as_written() -> None:
    """Unchanged files: every key, stage RunConfig, method option and attack name checks."""
    assert set(NAMES) == {
        "table1_cifar10",
        "table2_cifar100",
        "table3_teachers",
        "table4_transfer",
        "figure2_negatives",
        "figure2_temperature",
        "ablation_reweighting",
    }
    for path in PAPER_CONFIGS:
        exp = load_experiment(path)
        assert exp.paper in PAPER and not exp.smoke
        plan = plan_experiment(exp)
        for stage in plan.stages.values():
            c = stage.config
            assert c.data.name in ("cifar10", "cifar100", "stl10")
            if stage.kind == "transfer":
                continue
            # The paper's protocol: eps 8/255; training PGD-10 with step 2/255.
            assert abs(c.attack.eps * 255 - 8) < 1e-9 and c.attack.steps == 10
            assert abs(c.attack.step_size * 255 - 2) < 1e-9
            assert abs(c.eval.eps * 255 - 8) < 1e-9 and abs(c.eval.step_size * 255 - 2) < 1e-9
            if stage.kind != "teacher":
                assert c.eval.attacks[:2] == ["natural", "pgd20"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    write_cifar10(root / "cifar10", n_per_batch=1, n_test=3, seed=1)
    write_cifar100(root / "cifar100", n_train=5, n_test=3, seed=2)
    write_stl10(root / "stl10", n_train=5, n_test=3, seed=3)
    return {"cifar10": root / "cifar10", "cifar100": root / "cifar100", "stl10": root / "stl10"}


@pytest.fixture(scope="module")
def stages_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("paper_stages")
    yield path
    shutil.rmtree(path, ignore_errors=True)  # ~5 GB of ResNet-18 checkpoints and models


# WRN-34-10 keeps its depth but not its width here: at 46M parameters every stage wrote
# ~700 MB of checkpoints and models (15 GB and minutes for this file); width 1 is ~0.5M.
NARROW_WRN = "{model: {kwargs: {depth: 34, widen_factor: 1}}}"


def _overrides(name: str, data: dict[str, Path], out: Path, stages: Path) -> list[str]:
    base = "cifar100" if name == "table2_cifar100" else "cifar10"
    extra = [f"out={out}", f"stages_dir={stages}", f"base.data.root={data[base]}"]
    if name in ("table1_cifar10", "table3_teachers"):
        extra += ["teachers.wrn_34_10.arch=wrn", f"teachers.wrn_34_10.config={NARROW_WRN}"]
    if name == "ablation_reweighting":
        extra.append(f"students.archs={{wrn: {NARROW_WRN}}}")
    if name.startswith("figure2"):  # every value's stages are checked by the test above
        values = load_experiment(PAPER_CONFIGS[NAMES.index(name)]).sweep.values  # type: ignore[union-attr]
        extra.append(f"sweep.values=[{values[0]}, {values[-1]}]")
    if name == "table3_teachers":
        extra += [
            f"teachers.{t}.config.data.root={data['cifar100']}" for t in ("resnet56", "wrn_40_2")
        ]
    if name == "table4_transfer":
        extra += [
            f"transfer.targets.stl10.root={data['stl10']}",
            f"transfer.targets.cifar100.root={data['cifar100']}",
        ]
    return [*SMOKE, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=NAMES)
def test_paper_config_runs_on_tiny_archives(
    path: Path, tiny_data: dict[str, Path], stages_dir: Path, tmp_path: Path
) -> None:
    exp = load_experiment(path, _overrides(path.stem, tiny_data, tmp_path / "out", stages_dir))
    lines: list[str] = []
    results = run_experiment(exp, log=lines.append)
    plan = plan_experiment(exp)
    evaluated = [s for s in plan.stages.values() if s.evaluated]
    assert results["finished"] and results["smoke"]
    assert {r["stage"] for r in results["records"]} == {s.key for s in evaluated}
    for r in results["records"]:
        assert set(r["accuracy"]) <= {"natural", "pgd2", "pgd7"}
        assert r["dataset"]["train_samples"] <= 5
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("SMOKE RUN: numbers meaningless") == 2
    assert "NOT the CIFAR-10 dataset" in report or "NOT the CIFAR-100 dataset" in report
    # The paper's own numbers sit in their own, labelled tables (figures have none).
    paper = PAPER[exp.paper or ""]
    assert paper.caption in report
    if paper.kind != "figure":
        assert "ours (measured)" in report
    if paper.kind != "figure" and path.stem != "ablation_reweighting":  # its WRN is narrowed
        assert "paper (reported)" in report
        assert next(iter(paper.cells.values()))[0] in report
    if exp.sweep is not None:
        assert list((tmp_path / "out" / "plots").glob("*.png"))
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["notice"].startswith("SMOKE RUN")
