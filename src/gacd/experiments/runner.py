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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from gacd.config import RunConfig, training_settings
from gacd.data import dataset_info
from gacd.engine.distributed import barrier, init_from_env, is_distributed, is_main
from gacd.engine.export import load_model, model_file
from gacd.engine.trainer import METRICS, MODEL_BEST, MODEL_LAST
from gacd.experiments.parallel import run_in_parallel
from gacd.experiments.plan import Plan, Stage, plan_experiment, stage_root
from gacd.experiments.probe import run_transfer
from gacd.experiments.records import (
    MARKER,
    RESULTS,
    accuracy_text,
    collect_results,
    data_summary,
    decide,
    fresh_marker,
    model_epoch,
    read_json,
    smoke_notice,
    wanted_attacks,
    write_json,
)
from gacd.experiments.report import write_report
from gacd.experiments.spec import ExperimentConfig, experiment_dict
from gacd.models.zoo import is_zoo_id
from gacd.options import to_dict
from gacd.progress import remaining, say
from gacd.training import (
    PreparedData,
    eval_budget,
    evaluate_configured,
    prepare_data,
    resolve_device,
    train,
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
    log: Any = say
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
            marker = fresh_marker(stage, fp, marker)
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

    def _announce(self, stage: Stage, status: str, note: str) -> None:
        """A line before a stage's training starts (it can take hours on real data)."""
        doing = {"trained": "training", "resumed": "resuming", "retrained": "retraining"}
        c = stage.config
        extra = f", {note}" if note else ""
        self.log(
            f"{self._position} {stage.key}: {doing.get(status, status)}{extra} "
            f"({stage.kind}, method {c.method.name}, {c.optim.epochs} epochs)"
        )

    def _train(
        self, stage: Stage, fp: dict[str, Any], marker: dict[str, Any] | None
    ) -> tuple[str, str, dict[str, Any]]:
        folder = self.root / stage.key
        status, resume, note = decide(
            self.root / stage.key, stage, fp, marker, [MODEL_LAST, MODEL_BEST]
        )
        if status == "skipped":
            return status, note, marker  # type: ignore[return-value]
        self._announce(stage, status, note)
        marker = fresh_marker(stage, fp, None)
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
        if stage.external_model is None and wanted_attacks(self.exp, stage, "last"):
            files["last"] = str(folder / MODEL_LAST)
        evaluation: dict[str, Any] = {"settings": settings, "models": {}, "data": old.get("data")}
        done: dict[Any, dict[str, Any]] = {}  # epoch -> entry: best is often the last epoch
        ran: list[str] = []
        started = time.perf_counter()
        for selection, path in files.items():
            attacks = wanted_attacks(self.exp, stage, selection)
            prev = old.get("models", {}).get(selection) or {}
            acc, described = dict(prev.get("accuracy", {})), dict(prev.get("attacks", {}))
            missing = [a for a in attacks if a not in acc]
            epoch, samples = prev.get("epoch"), prev.get("samples")
            if missing:
                epoch = model_epoch(path)
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
                evaluation["data"] = data_summary(config, data)
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
            evaluation["data"] = data_summary(config, self.data(config))
        evaluation["seconds"] = time.perf_counter() - started + (old.get("seconds") or 0.0)
        marker["evaluation"] = evaluation
        return ran

    def _transfer(
        self, stage: Stage, fp: dict[str, Any], marker: dict[str, Any] | None
    ) -> tuple[str, str, dict[str, Any]]:
        """A linear probe by `run_transfer`; its last epoch is evaluated."""
        folder = self.root / stage.key
        status, resume, note = decide(
            self.root / stage.key, stage, fp, marker, ["transfer.json", MODEL_LAST]
        )
        if status == "skipped":
            return status, note, marker  # type: ignore[return-value]
        self._announce(stage, status, note)
        marker = fresh_marker(stage, fp, None)
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
            "data": data_summary(c, self.data(c)),
            "probe": payload["probe"],
        }
        return status, note, marker

    # -- the whole experiment -------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        out = Path(self.exp.out)
        if is_main():
            out.mkdir(parents=True, exist_ok=True)
            (out / "experiment.yaml").write_text(
                yaml.safe_dump(experiment_dict(self.exp), sort_keys=False)
            )
        notice = smoke_notice(self.exp, self.plan)
        if notice:
            self.log(f"[{self.exp.name}] {notice}")
        jobs = 1 if is_distributed() else self.exp.jobs  # torchrun: all ranks on each stage
        finished = self._sequential() if jobs == 1 else run_in_parallel(self, jobs)
        order = {key: i for i, key in enumerate(self.plan.stages)}
        summary: list[dict[str, Any]] = []
        results: dict[str, Any] = {}
        for stage, outcome in finished:
            summary.append(self._summary(stage, outcome))
            summary.sort(key=lambda entry: order[entry["stage"]])
            note = f", {outcome.note}" if outcome.note else ""
            self.log(
                f"[{order[stage.key] + 1}/{len(order)}] {stage.key}: {outcome.status}{note} "
                f"({outcome.seconds:.1f} s){accuracy_text(self.root / stage.key)}"
            )
            results = collect_results(self.exp, self.plan, summary)
            results["wall_seconds"] = time.perf_counter() - started
            write_json(out / RESULTS, results)
        results["finished"] = True
        write_json(out / RESULTS, results)
        return results

    def _sequential(self) -> Iterator[tuple[Stage, StageOutcome]]:
        """Each stage in plan order, announced with its position and the time left."""
        stages = list(self.plan.stages.values())
        trained_epochs, trained_seconds = 0, 0.0
        for i, stage in enumerate(stages, 1):
            self._position = f"[{i}/{len(stages)}]"
            to_train = trained_epochs + self.pending_epochs(stages[i - 1 :])
            left = remaining(trained_epochs, to_train, trained_seconds)
            self._position += f" {left}" if left else ""
            outcome = self.run_stage(stage)
            if outcome.status in ("trained", "resumed", "retrained"):
                trained_epochs += stage.config.optim.epochs
                trained_seconds += outcome.seconds
            yield stage, outcome

    def run_stage_alone(self, key: str, position: str) -> StageOutcome:
        """Run one stage in a worker process of a parallel run: the upstream stages are
        finished, so their fingerprints are computed here first."""
        if self.exp.threads is not None:
            torch.set_num_threads(self.exp.threads)
        for stage in self.plan.stages.values():
            if stage.key == key:
                self._position = position
                return self.run_stage(stage)
            self._hashes[stage.key] = self.fingerprint(stage)["hash"]
        raise KeyError(key)

    def pending_epochs(self, stages: list[Stage]) -> int:
        """Epochs still to train among `stages` (those whose marker is not finished)."""
        return sum(
            s.config.optim.epochs
            for s in stages
            if s.external_model is None
            and (read_json(self.root / s.key / MARKER) or {}).get("status") != "finished"
        )

    def _summary(self, stage: Stage, outcome: StageOutcome) -> dict[str, Any]:
        marker = read_json(self.root / stage.key / MARKER) or {}
        return {
            "stage": stage.key,
            "status": outcome.status,
            "seconds": outcome.seconds,
            "train_seconds": marker.get("train_seconds"),
            "epochs": None if stage.external_model else stage.config.optim.epochs,
            "config_epochs": self.exp.file_epochs.get(stage.key),
        }


def run_experiment(exp: ExperimentConfig, *, log: Any = say, report: bool = True) -> dict[str, Any]:
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
