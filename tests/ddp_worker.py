"""Run under `torchrun --nproc_per_node 2` by test_distributed.py: trains a short run with
data parallelism (gloo on CPU) and saves every rank's final state for comparison.

    ddp_worker.py OUT [--resume] [--interrupt-at EPOCH] [--record] [--trace]
                      [--evaluate MODEL] [--watch-syncs] key=value ...

--interrupt-at EPOCH  stop when the run reaches EPOCH (0-based), after the checkpoint of
                     the epoch before;
--resume             continue from OUT's checkpoint;
--record             save, per rank, what drew the first batch's augmentation and the
                     first attack's random start (generator states, the augmentation's
                     input and output) to OUT/record_rank{r}.pt;
--trace              save the student's parameters after every optimiser step to
                     OUT/trace_rank{r}.pt;
--evaluate MODEL     save MODEL's PGD-5 accuracy on the validation split, computed across
                     the ranks, to OUT/evaluation.json (rank 0), and the sizes of the
                     batches each rank attacked to OUT/evaluation_rank{r}.json;
--watch-syncs        count DDP's gradient all-reduces, and those started while a training
                     attack runs, to OUT/syncs_rank{r}.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

import gacd.data.loader as loader
import gacd.evaluation.robust as robust
import gacd.methods.base as method_base
from gacd.config import load_run_config
from gacd.engine.distributed import is_main, rank
from gacd.engine.export import load_model
from gacd.evaluation import parse_attack, robust_accuracy
from gacd.training import build_trainer

EVAL_SEED = 0


def trace_steps(trainer) -> list[torch.Tensor]:
    """Record the student's parameters (one flat vector) after every optimiser step."""
    trace: list[torch.Tensor] = []
    method = trainer.method
    after_step = method.after_step

    def record(batch):
        after_step(batch)
        params = [p.detach().reshape(-1) for p in method.student.parameters()]
        trace.append(torch.cat(params).clone())

    method.after_step = record
    return trace


def watch_syncs(trainer, out: str) -> None:
    """Count the gradient all-reduces DDP starts, and how many start inside an attack."""
    counts = {"all_reduces": 0, "during_attack": 0}
    in_attack = [False]
    method = trainer.method
    adversary = method.adversary

    def watched_adversary(*args, **kwargs):
        in_attack[0] = True
        try:
            return adversary(*args, **kwargs)
        finally:
            in_attack[0] = False

    def hook(state, bucket):
        counts["all_reduces"] += 1
        counts["during_attack"] += int(in_attack[0])
        with open(f"{out}/syncs_rank{rank()}.json", "w") as handle:
            json.dump(counts, handle)
        return default_hooks.allreduce_hook(state, bucket)

    method.adversary = watched_adversary
    trainer.ddp.register_comm_hook(None, hook)


def validation_pgd5(model, split, across_ranks: bool) -> float:
    """PGD-5 accuracy at the digits budget, random starts from a fixed CPU seed."""
    attack = parse_attack("pgd5", 0.2, 0.05)
    generator = torch.Generator().manual_seed(EVAL_SEED)
    return robust_accuracy(
        model, split, attack, batch_size=64, generator=generator, across_ranks=across_ranks
    )


class Interrupted(Exception):
    pass


def record_first_draws(out: str) -> None:
    """Wrap augmentation and PGD to save this rank's first call of each: the state of the
    generator it drew from (before the draw) and, for augmentation, its input and output."""
    record: dict[str, object] = {}
    real_augment, real_pgd = loader.augment_batch, method_base.pgd

    def save() -> None:
        if {"augment_state", "pgd_state"} <= record.keys():
            torch.save(record, f"{out}/record_rank{rank()}.pt")

    def augment_batch(images, augment, generator=None):
        state = generator.get_state()
        result = real_augment(images, augment, generator)
        if "augment_state" not in record:
            record.update(augment_in=images.cpu(), augment_out=result.cpu(), augment_state=state)
            save()
        return result

    def pgd(objective, x, spec, *, generator=None, per_sample_best=None):
        if "pgd_state" not in record:
            record.update(pgd_state=generator.get_state(), pgd_shape=tuple(x.shape))
            save()
        return real_pgd(objective, x, spec, generator=generator, per_sample_best=per_sample_best)

    loader.augment_batch = augment_batch
    method_base.pgd = pgd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--interrupt-at", type=int, default=None)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--evaluate", default=None)
    parser.add_argument("--watch-syncs", action="store_true")
    args = parser.parse_intermixed_args()
    torch.set_num_threads(1)
    config = load_run_config(None, [f"out={args.out}", "progress=false", *args.overrides])
    trainer = build_trainer(config)
    if args.record:
        record_first_draws(args.out)
    trace = trace_steps(trainer) if args.trace else None
    if args.watch_syncs:
        watch_syncs(trainer, args.out)
    if args.evaluate is not None:
        attacked = []
        real_pgd = robust.pgd
        robust.pgd = lambda objective, x, *a, **k: (
            attacked.append(len(x)) or real_pgd(objective, x, *a, **k)
        )
        accuracy = validation_pgd5(load_model(args.evaluate), trainer.val, across_ranks=True)
        robust.pgd = real_pgd
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(f"{args.out}/evaluation_rank{rank()}.json", "w") as handle:
            json.dump({"attacked_batches": attacked}, handle)
        if is_main():
            with open(f"{args.out}/evaluation.json", "w") as handle:
                json.dump({"pgd5": accuracy}, handle)
    if args.interrupt_at is not None:
        run_epoch = trainer._train_epoch

        def train_epoch(epoch: int, epochs: int):
            if epoch == args.interrupt_at:
                raise Interrupted
            return run_epoch(epoch, epochs)

        trainer._train_epoch = train_epoch
    try:
        trainer.fit(resume=args.resume)
    except Interrupted:
        return
    state = {
        k: v.detach().cpu()
        for k, v in trainer.method.state_dict().items()
        if isinstance(v, torch.Tensor)
    }
    torch.save(state, f"{args.out}/rank{rank()}_state.pt")
    if trace is not None:
        torch.save(torch.stack(trace), f"{args.out}/trace_rank{rank()}.pt")


if __name__ == "__main__":
    main()
