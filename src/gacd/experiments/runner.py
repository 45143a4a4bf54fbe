"""`gacd run`: execute an experiment's stages with caching, then collect and report.

Each stage is a normal training run in its own directory. A stage's `stage.json` records
the settings it was trained with (a fingerprint, upstream stages' fingerprints included),
its status and its evaluations, so that a re-run

- skips a finished stage whose settings are unchanged (evaluating only attacks it lacks),
- resumes an interrupted stage, or one whose epoch count was raised, from checkpoint.pt,
- retrains from scratch a stage whose settings (or an upstream stage) changed otherwise.

Under torchrun every rank runs the same plan: all ranks train each stage together (data
parallel) and split its evaluation; rank 0 alone writes markers, results and the report,
and the ranks meet at a barrier after each stage, so all of them read the same markers and
take the same decisions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from gacd.config import RunConfig, to_dict, training_settings
from gacd.data import dataset_info
from gacd.engine.checkpoint import load_checkpoint
from gacd.engine.distributed import barrier, init_from_env, is_main
from gacd.engine.export import load_model, load_model_meta, model_file
from gacd.engine.trainer import CHECKPOINT, METRICS, MODEL_BEST, MODEL_LAST
from gacd.experiments.plan import Plan, Stage, plan_experiment, stage_root
from gacd.experiments.probe import run_transfer
from gacd.experiments.spec import ExperimentConfig, experiment_dict
from gacd.methods import recipe
from gacd.models.zoo import is_zoo_id
from gacd.progress import remaining
from gacd.training import (
    PreparedData,
    eval_budget,
    evaluate_configured,
    prepare_data,
    resolve_device,
    train,
)

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


# Wiring: the upstream stages' fingerprints stand in for the teacher and init paths.
WIRING = ("teacher", "init")


def stage_settings(config: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in training_settings(config).items() if k not in WIRING}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _eval_settings(config: RunConfig, eps: float, step: float) -> dict[str, Any]:
    e = config.eval
    return {
        "split": e.split,
        "eps": eps,
        "step_size": step,
        "restarts": e.restarts,
        "max_samples": e.max_samples,
        "seed": config.seed,
    }


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


@dataclass
class StageOutcome:
    status: str  # skipped | trained | resumed | retrained | evaluated (external model)
    seconds: float
    note: str = ""


@dataclass
class Runner:
    exp: ExperimentConfig
    root: Path  # stage directories live here
    plan: Plan
    log: Any = print
    _data: dict[str, PreparedData] = field(default_factory=dict)
    _hashes: dict[str, str] = field(default_factory=dict)
    _position: str = ""  # "[k/n] ~time left", for the line announcing a stage

    # -- data -----------------------------------------------------------------------------
    def data(self, config: RunConfig) -> PreparedData:
        device = resolve_device(config.device)
        key = json.dumps([to_dict(config)["data"], str(device)], sort_keys=True)
        if key not in self._data:
            self._data[key] = prepare_data(config, device)
        return self._data[key]

    # -- fingerprints ---------------------------------------------------------------------
    def fingerprint(self, stage: Stage) -> dict[str, Any]:
        settings = stage_settings(stage.config)
        upstream = {k: self._hashes[k] for k in stage.depends}
        if stage.external_model is not None:
            c = stage.config
            path = model_file(stage.external_model, c.zoo_root, c.zoo_download)
            stat = path.stat()
            settings = {"model": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}
            if is_zoo_id(stage.external_model):
                settings["id"] = stage.external_model
        fp = {"settings": settings, "upstream": upstream}
        fp["hash"] = _hash([settings, upstream])
        return fp

    # -- one stage ------------------------------------------------------------------------
    def run_stage(self, stage: Stage) -> StageOutcome:
        started = time.perf_counter()
        folder = self.root / stage.key
        fp = self.fingerprint(stage)
        self._hashes[stage.key] = fp["hash"]
        marker = read_json(folder / MARKER)
        if stage.external_model is not None:
            status, note = "evaluated", ""  # fingerprint() found its file
            marker = self._fresh_marker(stage, fp, marker)
        elif stage.kind == "transfer":
            status, note, marker = self._transfer(stage, fp, marker)
        else:
            status, note, marker = self._train(stage, fp, marker)
        if stage.evaluated and stage.kind != "transfer":
            evaluated = self._evaluate(stage, marker)
            if evaluated and status == "skipped":
                note = f"evaluated {', '.join(evaluated)}"
        marker["status"] = "finished"
        marker["last_status"] = status
        write_json(folder / MARKER, marker)
        barrier()  # every rank reads this marker before the next decision
        return StageOutcome(status, time.perf_counter() - started, note)

    def _fresh_marker(
        self, stage: Stage, fp: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
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

    def _decide(
        self, stage: Stage, fp: dict[str, Any], marker: dict[str, Any] | None, outputs: list[str]
    ) -> tuple[str, bool, str]:
        """(status, resume, note): skipped, trained, resumed (from checkpoint.pt) or
        retrained (from scratch, because settings or an upstream stage changed)."""
        folder = self.root / stage.key
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

    def _announce(self, stage: Stage, status: str, note: str) -> None:
        """A line before a stage's training starts (it can take hours on real data)."""
        doing = {"trained": "training", "resumed": "resuming", "retrained": "retraining"}
        c = stage.config
        extra = f", {note}" if note else ""
        self.log(
            f"{self._position} {stage.key}: {doing.get(status, status)}{extra} "
            f"({stage.kind}, method {c.method['name']}, {c.optim.epochs} epochs)"
        )

    def _train(
        self, stage: Stage, fp: dict[str, Any], marker: dict[str, Any] | None
    ) -> tuple[str, str, dict[str, Any]]:
        folder = self.root / stage.key
        status, resume, note = self._decide(stage, fp, marker, [MODEL_LAST, MODEL_BEST])
        if status == "skipped":
            return status, note, marker  # type: ignore[return-value]
        self._announce(stage, status, note)
        marker = self._fresh_marker(stage, fp, None)
        write_json(folder / MARKER, marker)  # "running": a crash from here on resumes
        config = stage.config
        result = train(config, resume=resume, data=self.data(config), ignore=WIRING)
        marker.update(
            epochs=result.epochs,
            best_epoch=result.best_epoch,
            train_seconds=sum(r.get("epoch_seconds", 0.0) for r in result.history),
        )
        return status, note, marker

    def _evaluate(self, stage: Stage, marker: dict[str, Any]) -> list[str]:
        """Evaluate best and last models under every attack a stored evaluation lacks;
        returns the attacks that ran."""
        config = stage.config
        eps, step = eval_budget(config, dataset_info(config.data.name).defaults)
        settings = _eval_settings(config, eps, step)
        folder = self.root / stage.key
        old = marker.get("evaluation") or {}
        if old.get("settings") != settings:
            old = {}
        files = {"best": stage.external_model or str(folder / MODEL_BEST)}
        if stage.external_model is None and _wanted(self.exp, stage, "last"):
            files["last"] = str(folder / MODEL_LAST)
        evaluation: dict[str, Any] = {"settings": settings, "models": {}, "data": old.get("data")}
        done: dict[Any, dict[str, Any]] = {}  # epoch -> entry: best is often the last epoch
        ran: list[str] = []
        started = time.perf_counter()
        for selection, path in files.items():
            attacks = _wanted(self.exp, stage, selection)
            prev = old.get("models", {}).get(selection) or {}
            acc, described = dict(prev.get("accuracy", {})), dict(prev.get("attacks", {}))
            missing = [a for a in attacks if a not in acc]
            epoch, samples = prev.get("epoch"), prev.get("samples")
            if missing:
                epoch = _model_epoch(path)
                if epoch != prev.get("epoch"):  # another model than the one evaluated before
                    acc, described, missing = {}, {}, list(attacks)
                twin = done.get(epoch) if epoch is not None else None
                if twin is not None:
                    for a in [a for a in missing if a in twin["accuracy"]]:
                        acc[a], described[a] = twin["accuracy"][a], twin["attacks"][a]
                        missing.remove(a)
                    samples = twin["samples"]
            if missing:
                data = self.data(config)
                evaluation["data"] = _data_summary(config, data)
                model = load_model(path, resolve_device(config.device), zoo_root=config.zoo_root)
                result = evaluate_configured(model, data, config, attacks=missing)
                acc.update(result["accuracy"])
                described.update(result["attacks"])
                samples = result["samples"]
                ran += [a for a in missing if a not in ran]
            # Everything measured so far is kept (experiments sharing a stage may ask for
            # different attacks); results.json lists the ones this experiment asks for.
            order = attacks + [a for a in acc if a not in attacks]
            entry = {
                "file": path,
                "epoch": epoch,
                "wanted": attacks,
                "accuracy": {a: acc[a] for a in order},
                "attacks": {a: described[a] for a in order},
                "samples": samples,
            }
            evaluation["models"][selection] = entry
            done[epoch] = entry
        if evaluation["data"] is None:
            evaluation["data"] = _data_summary(config, self.data(config))
        evaluation["seconds"] = time.perf_counter() - started + (old.get("seconds") or 0.0)
        marker["evaluation"] = evaluation
        return ran

    def _transfer(
        self, stage: Stage, fp: dict[str, Any], marker: dict[str, Any] | None
    ) -> tuple[str, str, dict[str, Any]]:
        """A linear probe by `run_transfer`; its last epoch is evaluated."""
        folder = self.root / stage.key
        status, resume, note = self._decide(stage, fp, marker, ["transfer.json", MODEL_LAST])
        if status == "skipped":
            return status, note, marker  # type: ignore[return-value]
        self._announce(stage, status, note)
        marker = self._fresh_marker(stage, fp, None)
        write_json(folder / MARKER, marker)
        c = stage.config
        payload = run_transfer(c, resume=resume, ignore=WIRING)
        history = [json.loads(line) for line in (folder / METRICS).read_text().splitlines()]
        marker["train_seconds"] = sum(r.get("epoch_seconds", 0.0) for r in history)
        marker["epochs"] = c.optim.epochs
        marker["evaluation"] = {
            "settings": {"eps": payload["eps"], "split": payload["split"]},
            "models": {
                "last": {
                    "file": payload["probe"]["model"],
                    "epoch": c.optim.epochs,
                    "wanted": list(c.eval.attacks),
                    "accuracy": payload["accuracy"],
                    "attacks": payload["attacks"],
                    "samples": payload["samples"],
                }
            },
            "data": _data_summary(c, self.data(c)),
            "probe": payload["probe"],
        }
        return status, note, marker

    # -- the whole experiment -------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        stages = list(self.plan.stages.values())
        out = Path(self.exp.out)
        if is_main():
            out.mkdir(parents=True, exist_ok=True)
            (out / "experiment.yaml").write_text(
                yaml.safe_dump(experiment_dict(self.exp), sort_keys=False)
            )
        notice = smoke_notice(self.exp, self.plan)
        if notice:
            self.log(f"[{self.exp.name}] {notice}")
        summary: list[dict[str, Any]] = []
        trained_epochs, trained_seconds = 0, 0.0
        for i, stage in enumerate(stages, 1):
            # Time left at this run's pace per epoch, over the stages not yet finished.
            pending = sum(
                s.config.optim.epochs
                for s in stages[i - 1 :]
                if s.external_model is None
                and (read_json(self.root / s.key / MARKER) or {}).get("status") != "finished"
            )
            left = remaining(trained_epochs, trained_epochs + pending, trained_seconds)
            self._position = f"[{i}/{len(stages)}]" + (f" {left}" if left else "")
            outcome = self.run_stage(stage)
            marker = read_json(self.root / stage.key / MARKER) or {}
            if outcome.status in ("trained", "resumed", "retrained"):
                trained_epochs += stage.config.optim.epochs
                trained_seconds += outcome.seconds
            summary.append(
                {
                    "stage": stage.key,
                    "status": outcome.status,
                    "seconds": outcome.seconds,
                    "train_seconds": marker.get("train_seconds"),
                    "epochs": None if stage.external_model else stage.config.optim.epochs,
                    "config_epochs": self.exp.file_epochs.get(stage.key),
                }
            )
            note = f", {outcome.note}" if outcome.note else ""
            self.log(
                f"[{i}/{len(stages)}] {stage.key}: {outcome.status}{note} "
                f"({outcome.seconds:.1f} s){_accuracy_text(self.root / stage.key)}"
            )
            results = collect_results(self.exp, self.plan, summary)
            results["wall_seconds"] = time.perf_counter() - started
            write_json(out / RESULTS, results)
        results["finished"] = True
        write_json(out / RESULTS, results)
        return results


def _model_epoch(path: str) -> int | None:
    """The epoch an exported model was saved at, read without loading its weights."""
    try:  # memory-mapped: only the metadata is read (a WRN-34-10 file is ~180 MB)
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, ValueError, OSError):
        return load_model_meta(path).get("epoch")
    return (blob.get("meta") or {}).get("epoch")


def _accuracy_text(folder: Path) -> str:
    marker = read_json(folder / MARKER) or {}
    models = (marker.get("evaluation") or {}).get("models") or {}
    best = models.get("best") or models.get("last")
    if not best:
        return ""
    wanted = best.get("wanted") or list(best["accuracy"])
    return "  " + "  ".join(f"{a} {best['accuracy'][a]:.2f}%" for a in wanted)


def _data_summary(config: RunConfig, data: PreparedData) -> dict[str, Any]:
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
            wanted = _wanted(exp, stage, selection)
            if any(a not in entry["accuracy"] for a in wanted):
                continue  # evaluated for another experiment; this one's run has not reached it
            records.append(
                {
                    "kind": "transfer"
                    if stage.kind == "transfer"
                    else "teacher"
                    if stage.kind == "teacher"
                    else "student",
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
                    "train_seconds": total,
                    "eval_seconds": evaluation.get("seconds"),
                    "seconds": seconds.get(stage.key, {}).get("seconds"),
                    "status": seconds.get(stage.key, {}).get("status"),
                    "dataset": evaluation.get("data"),
                }
            )
    sweep = exp.sweep
    teachers = {}
    for name, spec in exp.teacher_specs.items():
        t_stage = next((s for s in plan.stages.values() if s.teacher == name), None)
        arch = spec.arch or (t_stage.config.model.arch if t_stage else None)
        teachers[name] = {
            "label": spec.label,
            "arch": arch if spec.path is None else None,
            "method": (spec.method or "pgd_at") if spec.path is None else None,
            "path": spec.path,
        }
    methods = (
        list(sweep.values) if sweep and sweep.param == "method" else list(exp.method_overrides)
    )
    return {
        "format": RESULTS_FORMAT,
        "experiment": exp.name,
        "title": exp.title,
        "notes": exp.notes,
        "smoke": smoke_notice(exp, plan) is not None,
        "notice": smoke_notice(exp, plan),
        "paper": exp.paper,
        "out": exp.out,
        "stages_dir": str(out),
        "data": data_info,
        "seeds": exp.seeds if not (sweep and sweep.param == "seed") else sweep.values,
        "teachers": teachers,
        "methods": {m: recipe(m).label for m in methods},
        "archs": (
            list(sweep.values)
            if sweep and sweep.param == "arch"
            else (exp.students.archs if exp.students else [])
        ),
        "sweep": None
        if sweep is None
        else {
            "param": sweep.param,
            "values": sweep.values,
            "label": sweep.label,
            "log_x": sweep.log_x,
        },
        "transfer": None
        if exp.transfer is None
        else {
            "targets": {
                name: {"label": t.label, "dataset": t.dataset, "classes": t.classes}
                for name, t in exp.transfer_targets.items()
            },
            "attacks": exp.transfer.attacks,
        },
        "records": records,
        "stages": summary or [],
        "finished": False,
    }


def _wanted(exp: ExperimentConfig, stage: Stage, selection: str) -> list[str]:
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


def metrics_epochs(folder: Path) -> int:
    """Epoch records in a stage's metrics.jsonl (tests use it to check a resume)."""
    path = folder / METRICS
    return len(path.read_text().splitlines()) if path.exists() else 0


def run_experiment(
    exp: ExperimentConfig, *, log: Any = print, report: bool = True
) -> dict[str, Any]:
    """Run every stage of `exp` (skipping finished ones), write results.json and report.md."""
    plan = plan_experiment(exp)
    _require_attacks(exp)
    if exp.threads is not None:
        torch.set_num_threads(exp.threads)
    first = next(iter(plan.stages.values()), None)
    init_from_env(first.config.device if first else "auto")  # joins torchrun's group, if any
    if not is_main():
        log = _silent
    results = Runner(exp, stage_root(exp), plan, log=log).run()
    if report and is_main():
        from gacd.experiments.report import write_report

        path = write_report(exp.out)
        log(f"report: {path}")
    return results


def _silent(*_: Any, **__: Any) -> None:
    """The log of ranks other than 0 (rank 0 speaks for all)."""


def _require_attacks(exp: ExperimentConfig) -> None:
    """Fail before any training when an evaluation needs a package that is missing."""
    attacks = [*exp.attacks, *(exp.attacks_last or [])]
    attacks += list(exp.transfer.attacks) if exp.transfer else []
    if "autoattack" in attacks:
        from gacd.evaluation.autoattack import require_autoattack

        require_autoattack()


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
        what = f"{stage.kind}, method {stage.config.method['name']}"
        lines.append(f"[{i}/{len(plan.stages)}] {stage.key} ({what}): {state}")
    return lines
