"""Run under `torchrun --nproc_per_node 2` by test_distributed.py: trains a short run with
data parallelism (gloo on CPU) and saves every rank's final state for comparison."""

from __future__ import annotations

import sys

import torch

from gacd.config import load_run_config
from gacd.engine.distributed import rank
from gacd.run import build_trainer


def main() -> None:
    out, *overrides = sys.argv[1:]
    torch.set_num_threads(1)
    config = load_run_config(None, [f"out={out}", "progress=false", *overrides])
    trainer = build_trainer(config)
    trainer.fit(resume=False)
    state = {
        k: v.detach().cpu()
        for k, v in trainer.method.state_dict().items()
        if isinstance(v, torch.Tensor)
    }
    torch.save(state, f"{out}/rank{rank()}_state.pt")


if __name__ == "__main__":
    main()
