"""Experiments: teachers -> students -> evaluation -> report, as cached pipeline stages.

`gacd run CONFIG` executes one (`run_experiment`), `gacd report RUN_DIR` renders its
report (`write_report`).
"""

from gacd.experiments.loading import experiment_from_dict, load_experiment
from gacd.experiments.plan import Plan, Stage, plan_experiment
from gacd.experiments.records import collect_results
from gacd.experiments.report import render_report, write_report
from gacd.experiments.runner import run_experiment
from gacd.experiments.spec import ExperimentConfig

__all__ = [
    "ExperimentConfig",
    "Plan",
    "Stage",
    "collect_results",
    "experiment_from_dict",
    "load_experiment",
    "plan_experiment",
    "render_report",
    "run_experiment",
    "write_report",
]
