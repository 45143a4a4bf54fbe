"""Stages of an experiment trained side by side (`jobs: N`), each in its own process.

A stage starts as soon as every stage it depends on has finished; each worker runs the same
`run_stage` a sequential run would, with the same seeds, so the numbers do not depend on
`jobs`. Workers are fresh processes (spawn) with the experiment's thread count (default 1):
on a CPU, independent tiny stages on separate cores beat one stage on several threads.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from gacd.errors import GacdError
from gacd.experiments.plan import Plan, Stage


class StageRunner(Protocol):
    plan: Plan

    def run_stage_alone(self, key: str, position: str) -> Any: ...


class StageFailed(GacdError):
    """A stage's worker stopped on a user-facing error (the message is the worker's)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _work(runner: StageRunner, key: str, position: str) -> tuple[str, Any]:
    """In the worker: run one stage; errors come back as values (they may not pickle)."""
    try:
        return "done", runner.run_stage_alone(key, position)
    except GacdError as err:
        return "error", (str(err), err.exit_code)
    except Exception:  # a bug: the parent raises it with the worker's traceback
        return "bug", traceback.format_exc()


def _chain_epochs(stages: list[Stage]) -> dict[str, int]:
    """Per stage: its epochs plus the longest chain of epochs of stages that depend on it."""
    chain: dict[str, int] = {}
    for stage in reversed(stages):  # plan order puts upstream first
        after = [chain[s.key] for s in stages if stage.key in s.depends]
        chain[stage.key] = stage.config.optim.epochs + max(after, default=0)
    return chain


def run_in_parallel(runner: StageRunner, jobs: int) -> Iterator[tuple[Stage, Any]]:
    """Yield (stage, outcome) as stages finish, at most `jobs` at a time, upstream first."""
    stages = list(runner.plan.stages.values())
    position = {s.key: f"[{i}/{len(stages)}]" for i, s in enumerate(stages, 1)}
    # Among the stages ready to start, those with the longest chain of stages waiting on
    # them go first (GACD's distillation before a one-stage student): a shorter critical path.
    below = _chain_epochs(stages)
    pending, done = sorted(stages, key=lambda s: -below[s.key]), set()
    running: dict[Future, Stage] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        while pending or running:
            for stage in [s for s in pending if all(d in done for d in s.depends)]:
                if len(running) == jobs:
                    break
                pending.remove(stage)
                running[pool.submit(_work, runner, stage.key, position[stage.key])] = stage
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                kind, payload = future.result()
                if kind != "done":
                    for other in running:
                        other.cancel()
                    if kind == "error":
                        raise StageFailed(f"{stage.key}: {payload[0]}", payload[1])
                    raise RuntimeError(f"stage {stage.key} failed in its worker:\n{payload}")
                done.add(stage.key)
                yield stage, payload
