"""What an experiment leaves on disk and reads back: each stage's marker (stage.json),
the smoke-run notice, and results.json collected from the markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gacd.config import RunConfig
from gacd.engine.checkpoint import load_checkpoint
from gacd.engine.distributed import is_main
from gacd.engine.export import load_model_meta
from gacd.engine.trainer import CHECKPOINT
from gacd.experiments.plan import Plan, Stage, stage_root
from gacd.experiments.spec import ExperimentConfig
from gacd.methods import recipe
from gacd.training import PreparedData

MARKER = "stage.json"
RESULTS = "results.json"
RESULTS_FORMAT = "gacd-experiment-results-v1"
SMOKE_NOTICE = "SMOKE RUN: numbers meaningless (tiny test data, a step or two of training)"
# A stage trained for less than this fraction of the epochs its YAML file sets makes the
# run a smoke run: its numbers do not stand for the configured experiment.
SMOKE_EPOCHS = 0.5


def cut_epochs(exp: ExperimentConfig, plan: Plan) -> dict[str, tuple[int, int]]:
    """Stages trained far below the epochs their YAML file sets: key -> (run, file)."""
    out = {}
    for key, stage in plan.stages.items():
        written = exp.file_epochs.get(key)
        if written and stage.config.optim.epochs < SMOKE_EPOCHS * written:
            out[key] = (stage.config.optim.epochs, written)
    return out


def smoke_notice(exp: ExperimentConfig, plan: Plan) -> str | None:
    if exp.smoke:
        return SMOKE_NOTICE
    cut = cut_epochs(exp, plan)
    if not cut:
        return None
    key, (run, written) = next(iter(cut.items()))
    return (
        f"SMOKE RUN: {len(cut)} stage(s) trained far fewer epochs than the config sets "
        f"(e.g. {key}: {run} of {written}); numbers do not stand for this experiment"
    )


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` atomically; under torchrun only rank 0 writes (one writer)."""
    if not is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)  # atomic: an interrupted write never leaves half a marker


def accuracy_text(folder: Path) -> str:
    marker = read_json(folder / MARKER) or {}
    models = (marker.get("evaluation") or {}).get("models") or {}
    best = models.get("best") or models.get("last")
    if not best:
        return ""
    wanted = best.get("wanted") or list(best["accuracy"])
    return "  " + "  ".join(f"{a} {best['accuracy'][a]:.2f}%" for a in wanted)


def collect_results(
    exp: ExperimentConfig, plan: Plan, summary: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """results.json: one record per evaluated model (stage x best/last) from the markers."""
    out = stage_root(exp)
    records = []
    seconds = {s["stage"]: s for s in summary or []}
    data_info: dict[str, Any] | None = None
    for stage in plan.evaluated():
        marker = read_json(out / stage.key / MARKER)
        if not marker or not marker.get("evaluation"):
            continue
        evaluation = marker["evaluation"]
        if stage.kind != "transfer" and data_info is None:
            data_info = {**evaluation["data"], **evaluation["settings"]}
        total = _stage_train_seconds(out, plan, stage)
        for selection, entry in evaluation["models"].items():
            wanted = wanted_attacks(exp, stage, selection)
            if any(a not in entry["accuracy"] for a in wanted):
                continue  # evaluated for another experiment; this one's run has not reached it
            ran = seconds.get(stage.key, {})
            records.append(
                {
                    **_record(stage, selection, entry, wanted),
                    "train_seconds": total,
                    "eval_seconds": evaluation.get("seconds"),
                    "seconds": ran.get("seconds"),
                    "status": ran.get("status"),
                    "dataset": evaluation.get("data"),
                }
            )
    return {
        **_experiment_header(exp, plan),
        "data": data_info,
        "records": records,
        "stages": summary or [],
        "finished": False,
    }


def _teachers(exp: ExperimentConfig, plan: Plan) -> dict[str, dict[str, Any]]:
    out = {}
    for name, spec in exp.teacher_specs.items():
        t_stage = next((s for s in plan.stages.values() if s.teacher == name), None)
        arch = spec.arch or (t_stage.config.model.arch if t_stage else None)
        out[name] = {
            "label": spec.label,
            "arch": arch if spec.path is None else None,
            "method": (spec.method or "pgd_at") if spec.path is None else None,
            "path": spec.path,
        }
    return out


def _experiment_header(exp: ExperimentConfig, plan: Plan) -> dict[str, Any]:
    """What results.json says of the experiment itself (everything but its records)."""
    sweep = exp.sweep
    axis = sweep.param if sweep is not None else None
    methods = list(sweep.values) if axis == "method" else list(exp.method_overrides)
    archs = exp.students.archs if exp.students else []
    transfer = exp.transfer
    return {
        "format": RESULTS_FORMAT,
        "experiment": exp.name,
        "title": exp.title,
        "notes": exp.notes,
        "smoke": smoke_notice(exp, plan) is not None,
        "notice": smoke_notice(exp, plan),
        "paper": exp.paper,
        "out": exp.out,
        "stages_dir": str(stage_root(exp)),
        "seeds": sweep.values if sweep is not None and axis == "seed" else exp.seeds,
        "teachers": _teachers(exp, plan),
        "methods": {m: recipe(m).label for m in methods},
        "archs": list(sweep.values) if sweep is not None and axis == "arch" else archs,
        "sweep": None
        if sweep is None
        else {
            "param": sweep.param,
            "values": sweep.values,
            "label": sweep.label,
            "log_x": sweep.log_x,
        },
        "transfer": None
        if transfer is None
        else {
            "targets": {
                name: {"label": t.label, "dataset": t.dataset, "classes": t.classes}
                for name, t in exp.transfer_targets.items()
            },
            "attacks": transfer.attacks,
        },
    }


def _record(
    stage: Stage, selection: str, entry: dict[str, Any], wanted: list[str]
) -> dict[str, Any]:
    """What results.json says of one evaluated model: its stage and its accuracies."""
    kind = stage.kind if stage.kind in ("transfer", "teacher") else "student"
    return {
        "kind": kind,
        "stage": stage.key,
        "teacher": stage.teacher,
        "arch": stage.arch or stage.config.model.arch,
        "method": stage.method,
        "seed": stage.seed,
        "sweep_value": stage.sweep_value,
        "target": stage.target,
        "source": stage.source,
        "selection": selection,
        "epoch": entry.get("epoch"),
        "accuracy": {a: entry["accuracy"][a] for a in wanted},
        "attacks": {a: entry["attacks"][a] for a in wanted},
        "samples": entry.get("samples"),
        "checkpoint": entry["file"],
        "external": stage.external_model is not None,
    }


def wanted_attacks(exp: ExperimentConfig, stage: Stage, selection: str) -> list[str]:
    if selection == "last" and exp.attacks_last is not None and stage.kind != "transfer":
        return list(exp.attacks_last)
    return list(stage.config.eval.attacks)


def _stage_train_seconds(out: Path, plan: Plan, stage: Stage) -> float | None:
    """Training seconds of this stage and every stage upstream of it within the student
    (a GACD student's cost includes its distillation; the teacher's is not counted)."""
    total, seen = 0.0, False
    todo = [stage.key]
    while todo:
        key = todo.pop()
        s = plan.stages[key]
        if s.kind == "teacher" and key != stage.key:
            continue
        marker = read_json(out / key / MARKER) or {}
        if marker.get("train_seconds") is not None:
            total += marker["train_seconds"]
            seen = True
        if s.kind != "transfer":
            todo.extend(s.depends)
    return total if seen else None


def describe_plan(exp: ExperimentConfig, plan: Plan) -> list[str]:
    """One line per stage with what a run would do now (for `gacd run --dry-run`)."""
    root = stage_root(exp)
    lines = [f"experiment {exp.name}: {len(plan.stages)} stages under {root}"]
    for i, stage in enumerate(plan.stages.values(), 1):
        folder = root / stage.key
        marker = read_json(folder / MARKER)
        if stage.external_model is not None:
            state = "exported model (evaluated only)"
        elif marker is not None and marker.get("status") == "finished":
            state = "finished (skipped unless its settings or an upstream stage changed)"
        elif (folder / CHECKPOINT).is_file():
            state = "interrupted (resumes from checkpoint.pt)"
        else:
            state = "to train"
        what = f"{stage.kind}, method {stage.config.method.name}"
        lines.append(f"[{i}/{len(plan.stages)}] {stage.key} ({what}): {state}")
    return lines


def fresh_marker(stage: Stage, fp: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """A stage's marker for fingerprint `fp`, keeping what `old` recorded under the same one."""
    keep = old if old is not None and old.get("hash") == fp["hash"] else {}
    return {
        "stage": stage.key,
        "kind": stage.kind,
        **fp,
        "status": keep.get("status", "running"),
        "evaluation": keep.get("evaluation"),
        "train_seconds": keep.get("train_seconds"),
        "epochs": keep.get("epochs"),
        "best_epoch": keep.get("best_epoch"),
    }


def decide(
    folder: Path,
    stage: Stage,
    fp: dict[str, Any],
    marker: dict[str, Any] | None,
    outputs: list[str],
) -> tuple[str, bool, str]:
    """(status, resume, note) for a stage in `folder`: skipped (finished with the same
    fingerprint and its `outputs` there), trained, resumed (from checkpoint.pt) or retrained
    (from scratch, because settings or an upstream stage changed)."""
    outputs_ok = all((folder / name).is_file() for name in outputs)
    if (
        marker is not None
        and marker.get("status") == "finished"
        and marker.get("hash") == fp["hash"]
        and outputs_ok
    ):
        return "skipped", True, ""
    resume, status, note = True, "trained", ""
    if marker is not None and marker.get("hash") != fp["hash"]:
        old = marker.get("settings", {})
        changed = sorted(
            k for k in set(old) | set(fp["settings"]) if old.get(k) != fp["settings"].get(k)
        )
        upstream_changed = marker.get("upstream") != fp["upstream"]
        old_epochs = old.get("optim.epochs")
        more_epochs = old_epochs is not None and stage.config.optim.epochs >= old_epochs
        if changed == ["optim.epochs"] and more_epochs and not upstream_changed:
            note = f"epochs {old_epochs} -> {stage.config.optim.epochs}"
        else:
            resume, status = False, "retrained"
            what = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
            note = "settings changed: " + (what or "upstream stage retrained")
            if upstream_changed and changed:
                note += "; upstream stage retrained"
    if resume and (folder / CHECKPOINT).is_file():
        status = "resumed"
        if not note:
            note = f"from epoch {load_checkpoint(folder / CHECKPOINT).get('epoch')}"
    return status, resume, note


def model_epoch(path: str) -> int | None:
    """The epoch an exported model was saved at, read without loading its weights."""
    try:  # memory-mapped: only the metadata is read (a WRN-34-10 file is ~180 MB)
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, ValueError, OSError):
        return load_model_meta(path).get("epoch")
    return (blob.get("meta") or {}).get("epoch")


def data_summary(config: RunConfig, data: PreparedData) -> dict[str, Any]:
    return {
        "name": config.data.name,
        "root": config.data.root,
        "classes": config.data.classes,
        "resize": config.data.resize,
        "train_samples": len(data.raw.train),  # before the validation split
        "test_samples": len(data.raw.test),
        "num_classes": data.raw.num_classes,
        "image_shape": list(data.raw.train.images.shape[1:]),
    }
