"""The training loop shared by every method: it never names one.

Per epoch: batches -> method.step -> backward -> optimiser -> method.after_step; then
validation, metrics, a resumable checkpoint (atomic) and exported best/last models.
Under torchrun the loss forward runs inside DistributedDataParallel (see `distributed`):
`batch_size` is the global batch, each rank trains on its slice of it.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gacd.config import OptimConfig
from gacd.data import Augment, DeviceSplit
from gacd.engine.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_atomic
from gacd.engine.distributed import (
    all_gather_objects,
    average_batchnorm_statistics,
    barrier,
    broadcast_state,
    data_parallel,
    is_main,
    mean_across_ranks,
    rank,
    world_size,
)
from gacd.engine.export import export_model
from gacd.engine.logging import MetricsLog, read_metrics
from gacd.engine.schedule import lr_multiplier
from gacd.engine.streams import derive_seed, rank_generator, seed_rank_globals
from gacd.errors import CheckpointError, ConfigError, TrainingDiverged
from gacd.evaluation.robust import NamedAttack, parse_attack, robust_accuracy
from gacd.methods import Method
from gacd.progress import bar, duration, remaining, say

CHECKPOINT = "checkpoint.pt"
MODEL_LAST = "model_last.pt"
MODEL_BEST = "model_best.pt"
METRICS = "metrics.jsonl"
TRAIN_FORMAT = "gacd-train-v2"  # v2: every data-parallel rank's random states


@dataclass
class TrainResult:
    out_dir: Path
    epochs: int
    best_epoch: int
    best_score: float | None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model_best(self) -> Path:
        return self.out_dir / MODEL_BEST

    @property
    def model_last(self) -> Path:
        return self.out_dir / MODEL_LAST


class Trainer:
    """Runs `method` for `optim.epochs` epochs; `fit(resume=True)` continues a checkpoint."""

    def __init__(
        self,
        method: Method,
        train: DeviceSplit,
        val: DeviceSplit | None,
        *,
        optim: OptimConfig,
        batch_size: int,
        augment: Augment,
        out_dir: str | Path,
        generator: torch.Generator,
        seed: int,
        val_attack: NamedAttack | None,
        selection: str | None,
        eval_batch_size: int = 512,
        amp: bool = True,
        progress: bool = True,
        epoch_lines: bool = False,
        tensorboard: bool = False,
        export_meta: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.train = train
        self.val = val
        self.optim_cfg = optim
        self.batch_size = batch_size
        self.augment = augment
        self.out_dir = Path(out_dir)
        self.generator = generator  # the data order: the same stream on every rank
        self.seed = seed
        self.val_attack = val_attack
        self.selection = selection  # "val_adv", "val_nat" or None (keep the last epoch)
        self.eval_batch_size = eval_batch_size
        self.device = train.device
        self.amp = amp and self.device.type == "cuda"
        self.progress = progress
        self.epoch_lines = epoch_lines  # one summary line per epoch (logs, `gacd train`)
        self.tensorboard = tensorboard
        self.export_meta = dict(export_meta or {})
        # drop_last keeps batch shapes fixed (memory-bank updates, compiled graphs) when the
        # split is large enough; a tiny split keeps its single short batch. Data-parallel
        # ranks need equal shapes and counts, so they always drop the rest.
        self.world = world_size()
        if batch_size % self.world:
            raise ConfigError(
                f"data.batch_size: {batch_size} (the global batch) does not split evenly over "
                f"{self.world} data-parallel ranks; use a multiple of {self.world}"
            )
        self.drop_last = len(train) >= 2 * batch_size or self.world > 1
        self.iters_per_epoch = train.num_batches(batch_size, self.drop_last)
        if self.iters_per_epoch < 1:
            raise ConfigError(
                f"data.batch_size: {batch_size} is too large; {len(train)} training samples "
                "give no full batch"
            )
        # Augmentation: each rank its own stream, on the training device.
        self.augment_generator = rank_generator(seed, "augment", rank(), self.device)
        broadcast_state(method)  # all ranks start from rank 0's state
        # The loss forward goes through DDP on several ranks; attacks use the plain modules.
        self.ddp = data_parallel(method, self.device) if self.world > 1 else None
        params = method.trainable_parameters()
        if not params:
            raise ConfigError(f"method '{method.name}' has no trainable parameters")
        self.optimizer = torch.optim.SGD(
            params,
            lr=optim.lr,
            momentum=optim.momentum,
            nesterov=optim.nesterov,
            weight_decay=optim.weight_decay,
        )
        factor = lr_multiplier(
            optim.schedule,
            optim.epochs * self.iters_per_epoch,
            self.iters_per_epoch,
            warmup_epochs=optim.warmup_epochs,
            milestones=optim.milestones,
            gamma=optim.gamma,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # -- state -------------------------------------------------------------------------------
    def generators(self) -> dict[str, torch.Generator]:
        """Every generator the run draws from, by name ("data" is shared by all ranks)."""
        gens = {"data": self.generator, "augment": self.augment_generator}
        gens.update({f"method.{k}": g for k, g in self.method.generators().items()})
        return gens

    def gather_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's random states, in rank order (a collective: all ranks call it)."""
        return all_gather_objects(rng_state(self.generators(), self.device))

    def state_dict(
        self,
        epoch: int,
        best_epoch: int,
        best_score: float | None,
        rng_states: list[dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "format": TRAIN_FORMAT,
            "epoch": epoch,
            "best_epoch": best_epoch,
            "best_score": best_score,
            "method_name": self.method.name,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iters_per_epoch": self.iters_per_epoch,
            "rng": {"world_size": self.world, "ranks": rng_states},
        }

    def load_state_dict(self, state: dict[str, Any]) -> tuple[int, int, float | None]:
        """Restore a checkpoint (CPU tensors, as `load_checkpoint` gives them): modules and
        optimiser move their tensors to the training device, RNG states stay on the CPU."""
        if state.get("format") != TRAIN_FORMAT:
            older = str(state.get("format", "")).startswith("gacd-train-")
            raise CheckpointError(
                f"not a gacd training checkpoint (format {state.get('format')!r})"
                + ("; it was written by an older gacd: train afresh" if older else "")
            )
        if state["method_name"] != self.method.name:
            raise CheckpointError(
                f"checkpoint was written by method '{state['method_name']}', "
                f"this run is '{self.method.name}'"
            )
        if state["iters_per_epoch"] != self.iters_per_epoch:
            raise ValueError(
                f"checkpoint was trained with {state['iters_per_epoch']} iterations per epoch, "
                f"this run has {self.iters_per_epoch} (data.batch_size or the data changed): "
                "the learning-rate schedule cannot continue"
            )
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._restore_rng(state["rng"], state["epoch"])
        return state["epoch"], state["best_epoch"], state["best_score"]

    def _restore_rng(self, saved: dict[str, Any], epoch: int) -> None:
        if saved["world_size"] == self.world:
            restore_rng_state(saved["ranks"][rank()], self.generators(), self.device)
            return
        # Another number of ranks: the global batches and the schedule are the same, and the
        # data order (shared) continues exactly; each rank's own streams cannot be mapped
        # onto the new ranks, so they are reseeded.
        if is_main():
            warnings.warn(
                f"resuming a run of {saved['world_size']} data-parallel ranks on {self.world}: "
                "the data order continues exactly, each rank's own random streams "
                "(augmentation, attack starts, sampling) are reseeded, so the run will not "
                "repeat an uninterrupted one bit for bit",
                stacklevel=3,
            )
        restore_rng_state(saved["ranks"][0], {"data": self.generator}, self.device)
        own = {k: g for k, g in self.generators().items() if k != "data"}
        for name, generator in own.items():
            generator.manual_seed(derive_seed(self.seed, "resumed", name, rank(), epoch))
        seed_rank_globals(self.seed, rank(), "resumed", epoch)

    # -- loop --------------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> TrainResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.out_dir / CHECKPOINT
        tensorboard = self.out_dir / "tensorboard" if self.tensorboard and is_main() else None
        log = MetricsLog(self.out_dir / METRICS, tensorboard)
        start, best_epoch, best_score = 0, 0, None
        if resume and ckpt_path.exists():
            start, best_epoch, best_score = self.load_state_dict(load_checkpoint(ckpt_path))
            if is_main():
                log.truncate_after(start)
        elif is_main() and (self.out_dir / METRICS).exists():
            (self.out_dir / METRICS).unlink()
        epochs = self.optim_cfg.epochs
        started = time.perf_counter()
        try:
            for epoch in range(start, epochs):
                record = self._train_epoch(epoch, epochs)
                record.update(self._validate(epoch))
                if self.epoch_lines and is_main():
                    left = remaining(
                        epoch + 1 - start, epochs - start, time.perf_counter() - started
                    )
                    say(epoch_line(self.method.name, record, epochs, left))
                score = record.get(self.selection) if self.selection else None
                improved = (
                    self.selection is None
                    or best_score is None
                    or (score is not None and score > best_score)
                )
                if improved:
                    best_epoch, best_score = epoch + 1, score
                rng_states = self.gather_rng_states()
                if is_main():  # one writer; every rank holds the same model and method state
                    if improved:
                        self._export(MODEL_BEST, epoch + 1, "best")
                    log.write(record)
                    state = self.state_dict(epoch + 1, best_epoch, best_score, rng_states)
                    save_atomic(state, ckpt_path)
            if is_main():
                self._export(MODEL_LAST, epochs, "last")
            barrier()  # nobody reads rank 0's files before they are written
        finally:
            log.close()
        return TrainResult(
            self.out_dir, epochs, best_epoch, best_score, read_metrics(self.out_dir / METRICS)
        )

    def _export(self, name: str, epoch: int, selected: str) -> None:
        meta = {**self.export_meta, "epoch": epoch, "selected": selected}
        export_model(self.method.student, self.out_dir / name, meta)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_epoch(self, epoch: int, epochs: int) -> dict[str, Any]:
        method = self.method
        method.train()
        method.start_epoch(epoch, epochs)
        # Terms stay tensors until the epoch ends (or the bar refreshes): no device sync per step.
        sums: dict[str, Tensor] = {}
        count = 0
        started = time.perf_counter()
        batches = self.train.batches(
            self.batch_size,
            shuffle=True,
            augment=self.augment,
            generator=self.generator,
            drop_last=self.drop_last,
            shard=(rank(), self.world),
            augment_generator=self.augment_generator,
        )
        steps = bar(
            batches,
            total=self.iters_per_epoch,
            desc=f"{method.name} {epoch + 1}/{epochs}",
            enabled=self.progress and is_main(),
        )
        # The first non-finite step, kept on the device and read every few steps: the run
        # stops near where it diverged without a device sync per step.
        first_bad = torch.tensor(-1, device=self.device)
        for step, batch in enumerate(steps):
            with self._autocast():
                # Under DDP the backward below averages the gradients over ranks.
                loss, terms, diagnostics = (
                    self.ddp(batch) if self.ddp is not None else method.step(batch)
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            method.after_step(batch)
            count += 1
            logged = (
                ("train_loss", loss),
                *((f"loss_{k}", v) for k, v in terms.items()),
                *((f"train_{k}", v) for k, v in diagnostics.items()),
            )
            for key, value in logged:
                value = torch.as_tensor(value).detach().float()
                sums[key] = sums[key] + value if key in sums else value
            finite = torch.isfinite(loss.detach()).all()
            first_bad = torch.where(finite | (first_bad >= 0), first_bad, step)
            if count % 10 == 0:
                self._stop_if_diverged(first_bad, epoch)
                steps.set_postfix({k: f"{float(v) / count:.3g}" for k, v in list(sums.items())[:4]})
        steps.close()
        self._stop_if_diverged(first_bad, epoch)
        # Ranks drift apart only in BatchNorm statistics (gradients are averaged).
        average_batchnorm_statistics(method)
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        # train_loss, its weighted terms (loss_<term>, which add up to it) and diagnostics.
        means = {k: float(v) / max(count, 1) for k, v in sums.items()}
        record.update(mean_across_ranks(means))
        record["epoch_seconds"] = time.perf_counter() - started
        return record

    def _stop_if_diverged(self, first_bad: Tensor, epoch: int) -> None:
        # Every rank stops together (a rank that ran on would wait in DDP's next collective).
        bad = [int(s) for s in all_gather_objects(int(first_bad)) if int(s) >= 0]  # type: ignore[call-overload]
        if bad:
            step = min(bad)
            raise TrainingDiverged(
                f"training diverged: non-finite loss at epoch {epoch + 1}, step {step + 1} of "
                f"{self.iters_per_epoch} (lr {self.optimizer.param_groups[0]['lr']:.3g}); "
                "nothing of this epoch was saved; try a lower optim.lr"
            )

    def _validate(self, epoch: int) -> dict[str, float]:
        """Each rank attacks its share of the validation batches; the counts are summed.
        The attack's random starts come from a stream of their own, seeded by the epoch:
        validation never moves a training stream, and needs no checkpointed state."""
        if self.val is None or len(self.val) == 0 or self.selection is None:
            return {}
        student = self.method.student
        natural = parse_attack("natural", 0, 0)
        size = self.eval_batch_size
        out = {
            "val_nat": robust_accuracy(
                student, self.val, natural, batch_size=size, across_ranks=True
            )
        }
        if self.val_attack is not None:
            generator = torch.Generator(self.device)
            generator.manual_seed(derive_seed(self.seed, "validation", epoch))
            out["val_adv"] = robust_accuracy(
                student,
                self.val,
                self.val_attack,
                batch_size=size,
                generator=generator,
                across_ranks=True,
            )
        return out


def epoch_line(method: str, record: dict[str, Any], epochs: int, left: str = "") -> str:
    """'pgd_at epoch 3/30: loss 1.234, val natural 95.12%, val PGD 55.30% (2.1 s, ~1 min left)';
    a loss of several terms is spelled out: 'loss 0.61 = kl_adv 0.52 + kl_nat 0.09'."""
    parts = [f"loss {record['train_loss']:.4g}"] if "train_loss" in record else []
    terms = {k[len("loss_") :]: v for k, v in record.items() if k.startswith("loss_")}
    if parts and len(terms) > 1:
        parts[0] += " = " + " + ".join(f"{k} {v:.4g}" for k, v in terms.items())
    if "val_nat" in record:
        parts.append(f"val natural {record['val_nat']:.2f}%")
    if "val_adv" in record:
        parts.append(f"val PGD {record['val_adv']:.2f}%")
    timing = duration(record.get("epoch_seconds", 0.0)) + (f", {left}" if left else "")
    return f"{method} epoch {record['epoch']}/{epochs}: {', '.join(parts)} ({timing})"
