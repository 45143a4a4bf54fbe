"""`gacd run` / `gacd report` on a tiny digits experiment: stages, caching, resume, report.

One experiment (a teacher, KD, and GACD / GACD+AFT swept over k) is run once through the
real command line; later tests work on copies of its directory, so each can change state
without disturbing the others. Every stage trains for one epoch with one-step attacks.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import TINY_EXPERIMENT_BASE
from gacd.cli import main
from gacd.errors import ConfigError
from gacd.experiments import experiment_from_dict, load_experiment, plan_experiment
from gacd.experiments.records import MARKER
from gacd.experiments.report_format import describe_data, fmt, summarise
from gacd.methods import method_class

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KD = "students/cnn/digits_cnn_small/kd/seed0"
TEACHER = "teachers/cnn/seed0"

EXPERIMENT: dict[str, Any] = {
    "name": "tiny",
    "smoke": True,
    "threads": 1,
    "seeds": [0],
    "attacks": ["natural", "pgd3"],
    "base": TINY_EXPERIMENT_BASE,
    "stages": {"distill": {"method": {"ot_iterations": 5}}},
    "teachers": {"cnn": {"arch": "digits_cnn_small", "label": "small CNN"}},
    "students": {"archs": ["digits_cnn_small"], "methods": ["kd", "gacd", "gacd_aft"]},
    "sweep": {"param": "method.negatives", "values": [8, 32], "methods": ["gacd", "gacd_aft"]},
}
# Evaluated stages (teacher, KD, and per k: GACD's linear stage and GACD+AFT), x best/last.
EVALUATED = {
    TEACHER,
    KD,
    *(
        f"students/cnn/digits_cnn_small/{s}/method.negatives={k}/seed0"
        for s in (
            "gacd_linear",
            "gacd_aft",
        )
        for k in (8, 32)
    ),
}
TRAINED = EVALUATED | {
    f"students/cnn/digits_cnn_small/gacd_distill/method.negatives={k}/seed0" for k in (8, 32)
}


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _status(stdout: str) -> dict[str, str]:
    """Stage key -> status word from the '[i/n] key: status ...' lines that end a stage
    (not the 'training ...' lines that announce one: with jobs > 1 those come from the
    workers, in no fixed order with the others)."""
    found = {}
    for line in stdout.splitlines():
        match = re.match(r"\[\d+/\d+\] (\S+): (\w+)", line)
        if match and match.group(2) not in ("training", "resuming", "retraining"):
            found[match.group(1)] = match.group(2)
    return found


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(config file, run dir, stdout) of the experiment run once via `gacd run`."""
    root = tmp_path_factory.mktemp("pipeline")
    run = root / "run"
    config = _write(root / "tiny.yaml", {**EXPERIMENT, "out": str(run)})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "gacd.cli", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return config, run, done.stdout


def test_first_run_trains_every_stage_and_records_results(
    first_run: tuple[Path, Path, str],
) -> None:
    _, run, stdout = first_run
    assert _status(stdout) == {key: "trained" for key in TRAINED}
    assert "SMOKE RUN" in stdout
    results = json.loads((run / "results.json").read_text())
    assert results["finished"] and results["smoke"]
    assert "meaningless" in results["notice"]
    assert results["data"]["name"] == "digits"
    records = results["records"]
    assert {r["stage"] for r in records} == EVALUATED
    assert len(records) == 2 * len(EVALUATED)  # best and last of each
    for r in records:
        assert r["selection"] in ("best", "last")
        assert set(r["accuracy"]) == {"natural", "pgd3"}
        assert 0.0 <= r["accuracy"]["pgd3"] <= 100.0
        assert Path(r["checkpoint"]).is_file()
        assert r["samples"] == 64
        assert r["train_seconds"] > 0
    by_stage = {(r["stage"], r["selection"]): r for r in records}
    teacher = by_stage[(TEACHER, "best")]
    assert (teacher["kind"], teacher["teacher"], teacher["method"]) == ("teacher", "cnn", "pgd_at")
    kd = by_stage[(KD, "best")]
    assert (kd["kind"], kd["arch"], kd["method"], kd["sweep_value"]) == (
        "student",
        "digits_cnn_small",
        "kd",
        None,
    )
    aft = by_stage[("students/cnn/digits_cnn_small/gacd_aft/method.negatives=32/seed0", "last")]
    assert (aft["method"], aft["sweep_value"], aft["seed"]) == ("gacd_aft", 32, 0)
    # The GACD students' cost includes their distillation.
    distill = json.loads(
        (
            run / "students/cnn/digits_cnn_small/gacd_distill/method.negatives=32/seed0" / MARKER
        ).read_text()
    )
    assert aft["train_seconds"] > distill["train_seconds"]


def test_stages_side_by_side_give_the_numbers_of_one_at_a_time(
    first_run: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """`jobs: 2` trains independent stages in two worker processes, upstream first, with
    the same seeds: every record equals the sequential run's, and each stage's line is
    printed once."""
    _, sequential, _ = first_run
    run = tmp_path / "jobs2"
    config = _write(tmp_path / "jobs2.yaml", {**EXPERIMENT, "out": str(run), "jobs": 2})
    done = subprocess.run(
        [sys.executable, "-m", "gacd.cli", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _status(done.stdout) == {key: "trained" for key in TRAINED}
    for key in TRAINED:
        assert len(re.findall(rf"\] {re.escape(key)}: trained", done.stdout)) == 1

    def records(root: Path) -> list[tuple]:
        found = json.loads((root / "results.json").read_text())["records"]
        return [(r["stage"], r["selection"], r["epoch"], r["accuracy"]) for r in found]

    assert records(run) == records(sequential)


def test_rerun_skips_every_stage(
    first_run: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, run, _ = first_run
    # A copy in another place: paths in the stage configs change, the stages do not.
    run = _copy(run, tmp_path / "moved")
    files = [p for p in run.rglob("*") if p.suffix in (".pt", ".jsonl")]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    before = json.loads((run / "results.json").read_text())["records"]
    code, out, _ = _run(["run", str(config), f"out={run}"], capsys)
    assert code == 0
    assert _status(out) == {key: "skipped" for key in TRAINED}
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # nothing retrained or rewritten
    after = json.loads((run / "results.json").read_text())["records"]
    assert [r["accuracy"] for r in after] == [r["accuracy"] for r in before]


def test_more_epochs_resume_and_changed_settings_retrain(
    first_run: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, run, _ = first_run
    run = _copy(run, tmp_path / "more")
    metrics = run / KD / "metrics.jsonl"
    epoch1 = metrics.read_text().splitlines()
    epoch1_checkpoint = (run / KD / "checkpoint.pt").read_bytes()
    code, out, _ = _run(["run", str(config), f"out={run}", "stages.student.optim.epochs=2"], capsys)
    assert code == 0
    status = _status(out)
    assert status.pop(KD) == "resumed"
    assert f"{KD}: resumed, epochs 1 -> 2" in out
    assert set(status.values()) == {"skipped"}
    lines = metrics.read_text().splitlines()
    assert len(lines) == 2 and lines[0] == epoch1[0]  # epoch 1 kept, epoch 2 added

    # An interruption during epoch 2: the checkpoint is epoch 1's, the marker says running,
    # the final model is missing. The stage resumes from epoch 1.
    (run / KD / "checkpoint.pt").write_bytes(epoch1_checkpoint)
    (run / KD / "model_last.pt").unlink()
    marker = json.loads((run / KD / MARKER).read_text())
    marker["status"] = "running"
    (run / KD / MARKER).write_text(json.dumps(marker))
    metrics.write_text(epoch1[0] + "\n")
    code, out, _ = _run(["run", str(config), f"out={run}", "stages.student.optim.epochs=2"], capsys)
    assert code == 0
    assert f"{KD}: resumed, from epoch 1" in out
    assert len(metrics.read_text().splitlines()) == 2
    assert (run / KD / "model_last.pt").is_file()

    # Another learning rate: KD starts afresh; nothing else is touched.
    code, out, _ = _run(["run", str(config), f"out={run}", "stages.student.optim.lr=0.01"], capsys)
    assert code == 0
    status = _status(out)
    assert status.pop(KD) == "retrained"
    assert "settings changed: optim.epochs, optim.lr" in out
    assert set(status.values()) == {"skipped"}
    assert len(metrics.read_text().splitlines()) == 1


def test_report_tables_match_results(
    first_run: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run, _ = first_run
    run = _copy(run, tmp_path / "report")
    (run / "report.md").unlink()
    code, out, _ = _run(["report", str(run)], capsys)
    assert code == 0 and "report.md" in out
    text = (run / "report.md").read_text()
    records = json.loads((run / "results.json").read_text())["records"]
    best = {r["stage"]: r for r in records if r["selection"] == "best"}
    assert text.count("SMOKE RUN: numbers meaningless") == 2  # top and bottom
    assert "PGD on cross-entropy: L-inf eps=0.2, 3 steps of 0.05, random start" in text

    def row(first_cell: str, after: str) -> list[str]:
        section = text[text.index(after) :]
        line = next(x for x in section.splitlines() if x.startswith(f"| {first_cell} |"))
        return [c.strip() for c in line.strip("|").split("|")]

    kd = best[KD]["accuracy"]
    assert row("KD", "best on validation\n\n| Method")[1:] == [
        f"{kd['natural']:.2f}",
        f"{kd['pgd3']:.2f}",
    ]
    teacher = best[TEACHER]["accuracy"]
    assert row("cnn", "### Teachers")[-2:] == [
        f"{teacher['natural']:.2f}",
        f"{teacher['pgd3']:.2f}",
    ]
    # Sweep tables: one per swept method, one row per k, and their plots.
    for method, stage, title in (
        ("gacd", "gacd_linear", "GACD"),
        ("gacd_aft", "gacd_aft", "GACD+AFT"),
    ):
        heading = f"### Teacher small CNN (PGD-AT) → small digits CNN, {title}\n"
        assert heading in text
        for k in (8, 32):
            acc = best[f"students/cnn/digits_cnn_small/{stage}/method.negatives={k}/seed0"][
                "accuracy"
            ]
            assert row(str(k), heading)[1:] == [f"{acc['natural']:.2f}", f"{acc['pgd3']:.2f}"]
        png = run / "plots" / f"sweep_method.negatives_cnn_digits_cnn_small_{method}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png.relative_to(run).as_posix()})" in text


def test_unknown_experiment_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = {**EXPERIMENT, "out": str(tmp_path / "x"), "studnets": {}}
    code, _, err = _run(["run", str(_write(tmp_path / "bad.yaml", bad))], capsys)
    assert code == 2
    assert "unknown key 'studnets'" in err and "students" in err and "teachers" in err
    nested = {**EXPERIMENT, "out": str(tmp_path / "x")}
    nested["teachers"] = {"cnn": {"arch": "digits_cnn", "epochs": 3}}
    code, _, err = _run(["run", str(_write(tmp_path / "nested.yaml", nested))], capsys)
    assert code == 2 and "unknown key 'teachers.cnn.epochs'" in err and "config" in err
    ok = _write(tmp_path / "ok.yaml", {**EXPERIMENT, "out": str(tmp_path / "x")})
    code, _, err = _run(["run", str(ok), "teachers.cnn.config.optim.epochz=3"], capsys)
    assert code == 2 and "optim.epochz" in err
    assert not (tmp_path / "x").exists()  # nothing written before the config is valid


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "students": {"archs": ["digits_cnn_small"], "methods": ["gacd", "kdd"]},
                "sweep": None,
            },
            "unknown method 'kdd'",
        ),
        ({"attacks": ["natural", "pgdx"]}, "unknown attack 'pgdx'"),
        ({"sweep": {"param": "method.negativez", "values": [1]}}, "applies to no stage"),
        ({"sweep": {"param": "optim.lr", "values": [0.1], "methods": ["ard"]}}, "'ard'"),
        ({"teachers": {}}, "need a teacher"),
        ({"paper": "table9"}, "unknown key 'table9'"),
        (
            {
                "students": {
                    "archs": ["digits_cnn_small"],
                    "methods": {"gacd": {"method": {"temperature": 0.5}}, "gacd_aft": None},
                },
                "sweep": None,
            },
            "share the stage",
        ),
        (
            {"base": {**EXPERIMENT["base"], "eval": {"attacks": ["natural"]}}},
            "top-level 'attacks'",
        ),
        ({"jobs": 0}, "jobs: must be at least 1, got 0"),
        ({"epochs_scale": 0.0}, "epochs_scale: must be positive, got 0.0"),
        ({"stages": {"linearr": {}}}, "stages: unknown stage kind 'linearr'"),
    ],
)
def test_invalid_experiments_are_rejected(change: dict[str, Any], message: str) -> None:
    data = {**EXPERIMENT, "out": "unused", **change}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        experiment_from_dict(data)


def test_plan_shares_distillation_and_wires_stages() -> None:
    exp = experiment_from_dict({**EXPERIMENT, "out": "/x", "sweep": None})
    plan = plan_experiment(exp)
    keys = list(plan.stages)
    distill = "students/cnn/digits_cnn_small/gacd_distill/seed0"
    assert keys == [
        TEACHER,
        KD,
        distill,
        "students/cnn/digits_cnn_small/gacd_linear/seed0",
        "students/cnn/digits_cnn_small/gacd_aft/seed0",
    ]
    aft = plan.stages["students/cnn/digits_cnn_small/gacd_aft/seed0"]
    assert aft.depends == [distill] and aft.config.init == f"/x/{distill}/model_last.pt"
    assert aft.config.method == method_class("pgd_at").Options()
    assert plan.stages[distill].config.teacher == f"/x/{TEACHER}/model_best.pt"
    assert plan.stages[KD].config.eval.attacks == ["natural", "pgd3"]
    assert not plan.stages[distill].evaluated
    # The adversarially trained probe is one more follow-up of the same distillation.
    students = {"archs": ["digits_cnn_small"], "methods": ["gacd", "gacd_adv_probe"]}
    exp = experiment_from_dict({**EXPERIMENT, "out": "/x", "sweep": None, "students": students})
    stages = plan_experiment(exp).stages
    natural = stages["students/cnn/digits_cnn_small/gacd_linear/seed0"]
    adversarial = stages["students/cnn/digits_cnn_small/gacd_adv_linear/seed0"]
    assert natural.depends == adversarial.depends == [distill]
    assert (natural.config.method.adversarial, adversarial.config.method.adversarial) == (
        False,
        True,
    )


def test_digits_experiment_configs_are_valid() -> None:
    files = sorted((CONFIGS / "digits" / "experiments").glob("*.yaml"))
    assert len(files) >= 7
    for path in files:
        exp = load_experiment(path)
        assert exp.threads == 1 and not exp.smoke
        assert plan_experiment(exp).stages


def test_summaries_and_data_labels() -> None:
    assert fmt([50.0]) == "50.00"
    assert fmt([50.0, 52.0]) == "51.00 ± 1.41"
    assert math.isnan(summarise([3.0])[1])
    text, full = describe_data(
        {"name": "cifar10", "train_samples": 25, "test_samples": 5, "classes": None}
    )
    assert not full and "NOT the CIFAR-10 dataset" in text
    text, full = describe_data(
        {"name": "cifar10", "train_samples": 50000, "test_samples": 10000, "classes": None}
    )
    assert full and text.startswith("CIFAR-10 (50000 train")


def test_epochs_cut_far_below_the_config_make_a_smoke_run() -> None:
    from gacd.experiments.records import smoke_notice

    path = CONFIGS / "digits" / "experiments" / "table1.yaml"
    as_written = load_experiment(path)
    assert smoke_notice(as_written, plan_experiment(as_written)) is None
    cut = load_experiment(path, ["stages.student.optim.epochs=2"])
    notice = smoke_notice(cut, plan_experiment(cut))
    assert notice is not None and notice.startswith("SMOKE RUN")
    assert "2 of 20" in notice
    mild = load_experiment(path, ["stages.student.optim.epochs=15"])  # 15 of 20: not a smoke
    assert smoke_notice(mild, plan_experiment(mild)) is None
