"""Shared, session-scoped fixtures: the digits data and two trained digits models.

Training happens once per test session, into a temporary directory, through the public
entry points (`load_run_config` + `gacd.training.train`), so every test file can reuse:

- `digits_data`: `gacd.training.prepare_data` for digits on the CPU (train / val / test splits);
- `digits_undefended_path`: exported `model_best.pt` of a naturally trained digits CNN
  (~98% clean, ~1% under PGD-20 at the digits eps 0.2);
- `digits_teacher_path`: exported `model_best.pt` of a PGD-AT digits teacher
  (~97% clean, ~56% under PGD-20 at the digits eps 0.2).

Models loaded from these paths with `gacd.engine.export.load_model` are fresh instances:
tests may modify them freely. Never write into the fixture directories.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

from gacd.config import RunConfig, load_run_config
from gacd.data import DeviceSplit, read_dataset
from gacd.models import ImageClassifier, build_model
from gacd.training import PreparedData, prepare_data, train

# Tiny models on 8x8 images gain nothing from intra-op threads, and oversubscribed threads
# on a busy 2-core machine cost many times their work: one thread unless asked otherwise.
torch.set_num_threads(max(1, min(2, int(os.environ.get("GACD_TEST_THREADS", "1")))))

# The `base` of the tests' tiny experiments (`gacd run`): one epoch, one-step attacks,
# 64 evaluation samples; the stages' numbers are meaningless, the plumbing is checked.
TINY_EXPERIMENT_BASE = {
    "device": "cpu",
    "progress": False,
    "data": {"name": "digits", "batch_size": 256},
    "attack": {"steps": 1, "step_size": 0.2},
    "eval": {"val_attack_steps": 1, "max_samples": 64},
    "optim": {"epochs": 1, "lr": 0.05},
}

# Undefended reference: plain cross-entropy; selection by clean validation accuracy.
UNDEFENDED_OVERRIDES = [
    "method.name=natural",
    "optim.epochs=10",
    "optim.lr=0.05",
    "eval.val_attack_steps=0",
]
# Robust teacher: PGD-AT with a cheaper training attack (5 steps of 0.06 cover the 0.2 ball)
# and a 5-step validation attack for model selection. Measured on one CPU thread: ~17-20 s
# of CPU, 96.7% clean and 55.7% under PGD-20 (eps 0.2) on the test split (30 epochs: ~24 s,
# 57.7%; the undefended model: 97.8% clean, 1.4% under PGD-20).
TEACHER_OVERRIDES = [
    "method.name=pgd_at",
    "optim.epochs=20",
    "optim.lr=0.05",
    "model.kwargs={spatial: 2, hidden: 256}",
    "attack.steps=5",
    "attack.step_size=0.06",
    "eval.val_attack_steps=5",
]
COMMON_OVERRIDES = ["device=cpu", "progress=false", "seed=0"]


def make_digits_config(out: Path | str, overrides: list[str]) -> RunConfig:
    """A digits RunConfig on the CPU, without progress bars, writing to `out`."""
    return load_run_config(None, [*COMMON_OVERRIDES, f"out={out}", *overrides])


@pytest.fixture(scope="session")
def digits_config() -> Callable[[Path | str, list[str]], RunConfig]:
    """`digits_config(out, overrides)`: a digits RunConfig on the CPU (seed 0, no progress
    bars) writing to `out`, with dotted `overrides` applied."""
    return make_digits_config


def _train_once(factory: pytest.TempPathFactory, name: str, overrides: list[str]) -> Path:
    result = train(make_digits_config(factory.mktemp(name), overrides), resume=False)
    assert result.model_best.is_file(), f"{name}: training exported no model_best.pt"
    return result.model_best


@pytest.fixture(scope="session")
def digits_data() -> PreparedData:
    """Digits prepared as a run would (default val fraction), on the CPU. Read-only."""
    return prepare_data(make_digits_config("unused", []), torch.device("cpu"))


@pytest.fixture(scope="session")
def digits_train_split() -> DeviceSplit:
    """The whole digits training split on the CPU, in dataset order (no validation split
    taken out): the method-level tests draw their batches and teachers from it. Read-only."""
    return DeviceSplit(read_dataset("digits").train, pixel_max=16, device="cpu")


@pytest.fixture(scope="session")
def digits_undefended_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_best.pt of a naturally trained digits CNN (10 epochs, ~2 s)."""
    return _train_once(tmp_path_factory, "digits_undefended", UNDEFENDED_OVERRIDES)


@pytest.fixture(scope="session")
def digits_teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_best.pt of a PGD-AT digits teacher (20 epochs, ~20 s on one thread)."""
    return _train_once(tmp_path_factory, "digits_teacher", TEACHER_OVERRIDES)


def tiny_digits_model(seed: int) -> ImageClassifier:
    """The small digits CNN the method-level tests build students and teachers from."""
    torch.manual_seed(seed)
    return build_model("digits_cnn_small", in_channels=1, num_classes=10, mean=(0.3,), std=(0.37,))


def natural_teacher(split: DeviceSplit, epochs: int, seed: int = 1) -> ImageClassifier:
    """`epochs` of natural SGD on `split`, so soft labels and confidences carry information."""
    model = tiny_digits_model(seed).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for b in split.batches(128, shuffle=True, generator=gen):
            loss = F.cross_entropy(model(b.images), b.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(stem: str) -> ModuleType:
    """Import benchmarks/<stem>.py as a module (its `main` does not run)."""
    path = BENCHMARKS / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
