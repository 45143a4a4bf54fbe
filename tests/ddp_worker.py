"""Run under `torchrun --nproc_per_node 2` by test_distributed.py: trains a short run with
data parallelism (gloo on CPU) and saves every rank's final state for comparison.

    ddp_worker.py OUT [--resume] [--interrupt-at EPOCH] [--record] key=value ...

--interrupt-at stops the run when it reaches that epoch (0-based), after the checkpoint of
the epoch before; --resume continues from OUT's checkpoint; --record saves, per rank, what
drew the first batch's augmentation and the first attack's random start (the generator
states, and the augmentation's input and output) to OUT/record_rank{r}.pt.
"""

from __future__ import annotations

import argparse

import torch

import gacd.data.loader as loader
import gacd.methods.base as method_base
from gacd.config import load_run_config
from gacd.engine.distributed import rank
from gacd.run import build_trainer


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
    args = parser.parse_intermixed_args()
    torch.set_num_threads(1)
    config = load_run_config(None, [f"out={args.out}", "progress=false", *args.overrides])
    trainer = build_trainer(config)
    if args.record:
        record_first_draws(args.out)
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


if __name__ == "__main__":
    main()
