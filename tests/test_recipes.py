"""Recipes: a method declares its stages; a new multi-stage method is one file, with no
edit to the pipeline, and runs through `gacd run` with its label in the report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch.nn.functional as F
import yaml

from conftest import TINY_EXPERIMENT_BASE
from gacd.cli import main
from gacd.data import Batch
from gacd.errors import ConfigError
from gacd.experiments import experiment_from_dict, plan_experiment
from gacd.methods import (
    METHODS,
    Method,
    MethodOptions,
    Recipe,
    StageTemplate,
    Step,
    recipe,
    register_method,
    step_output,
)
from gacd.methods import stage_kinds as kinds_of_stages


@dataclass
class WarmThenHardenOptions(MethodOptions):
    name: str = "warm_harden"


class WarmThenHarden(Method):
    """A two-stage method defined here, as a user's own file would: natural warm-up of the
    student, then PGD adversarial training started from the warm model."""

    name = "warm_harden"
    label = "Warm+Harden"
    Options = WarmThenHardenOptions

    def step(self, batch: Batch) -> Step:
        ce = F.cross_entropy(self.student(batch.images), batch.labels)
        return step_output({"ce": ce}, {})

    @classmethod
    def recipes(cls) -> tuple[Recipe, ...]:
        warm = StageTemplate("warm", "warm", {"name": cls.name}, evaluated=False)
        harden = StageTemplate("harden", "harden", {"name": "pgd_at"}, from_previous=True)
        return (Recipe(cls.name, cls.label, (warm, harden), needs_teacher=False),)


@pytest.fixture
def registered() -> Iterator[type[Method]]:
    register_method(WarmThenHarden)
    try:
        yield WarmThenHarden
    finally:
        METHODS.unregister(WarmThenHarden.name)


EXPERIMENT = {
    "name": "two_stage",
    "smoke": True,
    "threads": 1,
    "attacks": ["natural", "pgd2"],
    "base": TINY_EXPERIMENT_BASE,
    # The new method's own stage kinds are configurable like GACD's.
    "stages": {"harden": {"optim": {"epochs": 2}}},
    "students": {"archs": ["digits_cnn_small"], "methods": ["warm_harden"]},
}


def test_a_two_stage_method_from_a_test_module_runs_through_gacd_run(
    registered: type[Method], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert {"warm", "harden"} <= set(kinds_of_stages())
    run = tmp_path / "run"
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump({**EXPERIMENT, "out": str(run)}))
    assert main(["run", str(config)]) == 0
    capsys.readouterr()
    results = json.loads((run / "results.json").read_text())
    stages = [s["stage"] for s in results["stages"]]
    root = "students/no_teacher/digits_cnn_small"
    assert stages == [f"{root}/warm/seed0", f"{root}/harden/seed0"]
    assert results["methods"] == {"warm_harden": "Warm+Harden"}
    assert [s["epochs"] for s in results["stages"]] == [1, 2]  # stages.harden applied
    # Only the final stage is evaluated; it started from the warm stage's model.
    assert {r["stage"] for r in results["records"]} == {f"{root}/harden/seed0"}
    harden = yaml.safe_load((run / root / "harden/seed0/config.yaml").read_text())
    assert harden["init"] == str(run / root / "warm/seed0/model_last.pt")
    assert harden["method"]["name"] == "pgd_at"
    assert "Warm+Harden" in (run / "report.md").read_text()


def test_recipes_come_from_the_methods_and_unknown_kinds_are_named(
    registered: type[Method],
) -> None:
    assert recipe("gacd_aft").label == "GACD+AFT"
    assert [t.kind for t in recipe("gacd").stages] == ["distill", "linear"]
    assert recipe("ard_reweighted").stages[0].method == {"name": "ard", "reweight": True}
    with pytest.raises(ConfigError, match=r"students\.methods: unknown method 'linear'"):
        recipe("linear")  # only ever a follow-up stage
    bad = {**EXPERIMENT, "out": "/x", "stages": {"hardn": {}}}
    with pytest.raises(ConfigError, match="stages: unknown stage kind 'hardn'"):
        experiment_from_dict(bad)
    plan = plan_experiment(experiment_from_dict({**EXPERIMENT, "out": "/x"}))
    assert [s.kind for s in plan.stages.values()] == ["warm", "harden"]
