"""The engine: atomic checkpoints, weights-only loading, exported models, LR schedules, RNG
state, and bit-for-bit resume (in process, and after a SIGKILL of the real command line)."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gacd.engine.trainer as trainer_module
from gacd.engine.checkpoint import (
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_atomic,
    seed_everything,
)
from gacd.engine.export import export_model, load_model, load_model_meta
from gacd.engine.logging import read_metrics
from gacd.engine.schedule import lr_multiplier
from gacd.errors import CheckpointError, ConfigError
from gacd.models import build_model
from gacd.training import build_trainer


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in records]


# -- save_atomic / load_checkpoint -----------------------------------------------------------------
def test_save_atomic_round_trips_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"  # the parent is created
    blob = {"w": torch.arange(6.0).view(2, 3), "epoch": 3, "name": "x", "lst": [1, 2.5, None]}
    save_atomic(blob, path)
    save_atomic({**blob, "epoch": 4}, path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 4 and loaded["name"] == "x" and loaded["lst"] == [1, 2.5, None]
    assert torch.equal(loaded["w"], blob["w"])


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failing_save_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch, error):
    path = tmp_path / "ckpt.pt"
    save_atomic({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")  # a partial write, then the crash
        raise error

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(type(error)):
        save_atomic({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(path)["epoch"] == 1


_UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    _UNPICKLED.append("code ran")
    return "payload"


class _Sneaky:
    """Unpickling this runs `_record_unpickling`: what weights_only loading must refuse."""

    def __reduce__(self):
        return (_record_unpickling, ())


class _Plain:
    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize("obj", [_Sneaky(), _Plain()], ids=["reduce", "plain-object"])
def test_load_checkpoint_is_weights_only(tmp_path, obj):
    path = tmp_path / "evil.pt"
    torch.save({"state": torch.ones(2), "obj": obj}, path)
    _UNPICKLED.clear()
    with pytest.raises(CheckpointError, match="refused without loading them"):
        load_checkpoint(path)
    assert _UNPICKLED == []


def test_load_checkpoint_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a torch file")
    with pytest.raises(CheckpointError, match="not a PyTorch zip archive"):
        load_checkpoint(bad)


# -- exported models -------------------------------------------------------------------------------
def _digits_model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        "digits_cnn", in_channels=1, num_classes=10, mean=(0.3,), std=(0.4,), **kwargs
    )


def test_export_and_load_model_round_trip(tmp_path):
    model = _digits_model(spatial=2, hidden=32).train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model(torch.rand(32, 1, 8, 8))
    path = tmp_path / "model.pt"
    export_model(model, path, {"dataset": "digits", "epoch": 7})
    loaded = load_model(path)

    assert type(loaded) is type(model)
    assert not any(m.training for m in loaded.modules()), "load_model must return eval mode"
    assert loaded.spec == model.spec and loaded.spec["kwargs"] == {"spatial": 2, "hidden": 32}
    assert _tensors_equal(loaded.state_dict(), model.state_dict())
    x = torch.rand(16, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert load_model_meta(path) == {"dataset": "digits", "epoch": 7}
    # The contract: plain tensors and primitives, readable with weights_only=True.
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "gacd-model-v1"


def test_export_writes_fp32_cpu_weights(tmp_path):
    model = _digits_model().to(torch.bfloat16)
    export_model(model, tmp_path / "m.pt")
    state = load_checkpoint(tmp_path / "m.pt")["state_dict"]
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 and v.device.type == "cpu" for v in floats)
    assert state["body.1.num_batches_tracked"].dtype == torch.int64
    assert load_model(tmp_path / "m.pt").classifier.weight.dtype == torch.float32


def test_export_needs_a_registry_built_model(tmp_path):
    model = _digits_model()
    del model.spec
    with pytest.raises(ValueError, match="no spec"):
        export_model(model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_load_model_on_a_training_checkpoint_says_what_it_is(digits_teacher_path):
    checkpoint = digits_teacher_path.parent / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["format"] == "gacd-train-v2"
    with pytest.raises(ValueError, match="not an exported gacd model") as info:
        load_model(checkpoint)
    assert "model_best.pt" in str(info.value)


# -- LR schedules ----------------------------------------------------------------------------------
def test_cosine_schedule_endpoints_and_midpoint():
    f = lr_multiplier("cosine", total_iters=100, iters_per_epoch=10)
    assert f(0) == 1.0
    assert f(25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert f(50) == pytest.approx(0.5)
    assert f(99) == pytest.approx((1 + math.cos(math.pi * 0.99)) / 2)
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert f(150) == pytest.approx(0.0, abs=1e-12)  # past the end it stays at zero
    values = [f(i) for i in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_warmup_ramps_linearly_then_cosine_over_the_rest():
    f = lr_multiplier("cosine", total_iters=100, iters_per_epoch=10, warmup_epochs=2)
    assert [f(i) for i in (0, 9, 19)] == pytest.approx([1 / 20, 10 / 20, 1.0])
    assert f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)  # halfway through the 80 cosine iterations
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    g = lr_multiplier("constant", total_iters=50, iters_per_epoch=5, warmup_epochs=1)
    assert [g(i) for i in range(7)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])


def test_step_schedule_drops_at_the_milestone_epochs():
    # 8 epochs of 10 iterations; milestones at 50% and 75% of the epochs: iterations 40, 60.
    f = lr_multiplier("step", 80, 10, milestones=(0.5, 0.75), gamma=0.1)
    assert [f(i) for i in (0, 39)] == [1.0, 1.0]
    assert [f(i) for i in (40, 59)] == pytest.approx([0.1, 0.1])
    assert [f(i) for i in (60, 79)] == pytest.approx([0.01, 0.01])
    # Milestones fall on epoch boundaries: round(0.3 * 10 epochs) = epoch 3 -> iteration 21.
    g = lr_multiplier("step", 70, 7, milestones=(0.3,), gamma=0.5)
    assert (g(20), g(21)) == (1.0, 0.5)


def test_constant_and_unknown_schedules():
    f = lr_multiplier("constant", 30, 3)
    assert {f(i) for i in range(40)} == {1.0}
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_multiplier("linear", 30, 3)(0)


# -- RNG state -------------------------------------------------------------------------------------
def _draw(generator: torch.Generator) -> tuple:
    return (
        random.random(),
        random.gauss(0.0, 1.0),  # uses (and refills) Python's cached gaussian
        np.random.rand(3).tolist(),
        float(np.random.standard_normal()),  # NumPy's legacy cached gaussian
        torch.rand(3).tolist(),
        torch.randn(2, generator=generator).tolist(),
        torch.randperm(10, generator=generator).tolist(),
    )


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    generator = seed_everything(1234)
    _draw(generator)  # one gaussian each: Python and NumPy now hold a cached second one
    assert random.getstate()[2] is not None and np.random.get_state()[3] == 1

    save_atomic({"rng": rng_state({"run": generator})}, tmp_path / "rng.pt")
    expected = _draw(generator)
    assert _draw(generator) != expected  # the streams really moved on

    fresh = torch.Generator()  # as a resumed process would hold
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], {"run": fresh})
    assert _draw(fresh) == expected


def test_seed_everything_is_reproducible():
    first = _draw(seed_everything(7))
    assert _draw(seed_everything(7)) == first
    assert _draw(seed_everything(8)) != first


# -- resume ----------------------------------------------------------------------------------------
RESUME_OVERRIDES = [
    "method.name=pgd_at",
    "model.arch=digits_cnn_small",
    "optim.epochs=4",
    "optim.lr=0.05",
    "attack.steps=2",
    "data.batch_size=256",
    "eval.val_attack_steps=2",
]


class _Killed(Exception):
    pass


def test_in_process_resume_equals_an_uninterrupted_run(tmp_path, digits_data, digits_config):
    epochs = 4
    full = build_trainer(digits_config(tmp_path / "a", RESUME_OVERRIDES), digits_data)
    result_a = full.fit(resume=False)

    # Interrupt the second run in the middle of its third epoch.
    interrupted = build_trainer(digits_config(tmp_path / "b", RESUME_OVERRIDES), digits_data)
    ipe = interrupted.iters_per_epoch
    steps = []
    original = interrupted.method.after_step

    def after_step(batch):
        original(batch)
        steps.append(1)
        if len(steps) == 2 * ipe + 1:
            raise _Killed

    interrupted.method.after_step = after_step
    with pytest.raises(_Killed):
        interrupted.fit(resume=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 2
    assert [r["epoch"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")] == [1, 2]
    assert not (tmp_path / "b" / "model_last.pt").exists()

    # A fresh trainer (as in a new process) picks the run up from the checkpoint.
    resumed = build_trainer(digits_config(tmp_path / "b", RESUME_OVERRIDES), digits_data)
    result_b = resumed.fit(resume=True)

    assert [r["epoch"] for r in result_b.history] == list(range(1, epochs + 1))
    assert _without_timing(result_b.history) == _without_timing(result_a.history)
    assert (result_b.best_epoch, result_b.best_score) == (result_a.best_epoch, result_a.best_score)
    for name in ("model_last.pt", "model_best.pt"):
        a = load_checkpoint(tmp_path / "a" / name)["state_dict"]
        b = load_checkpoint(tmp_path / "b" / name)["state_dict"]
        assert _tensors_equal(a, b), name
    # The recorded learning rate follows the cosine schedule (no warm-up), at epoch ends.
    for record in result_a.history:
        expected = 0.05 * 0.5 * (1 + math.cos(math.pi * record["epoch"] / epochs))
        assert record["lr"] == pytest.approx(expected, abs=1e-12)


def test_resume_refuses_a_checkpoint_of_another_method(
    digits_teacher_path, digits_data, digits_config, tmp_path
):
    trainer = build_trainer(
        digits_config(tmp_path, ["method.name=natural", "optim.epochs=1"]), digits_data
    )
    state = load_checkpoint(digits_teacher_path.parent / "checkpoint.pt")
    with pytest.raises(ValueError, match="written by method 'pgd_at'"):
        trainer.load_state_dict(state)
    with pytest.raises(ValueError, match="not a gacd training checkpoint"):
        trainer.load_state_dict(load_checkpoint(digits_teacher_path))


def _tensors_in(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors_in(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors_in(v)]
    return []


def test_resume_off_the_cpu_hands_the_rng_cpu_byte_tensors(
    tmp_path, digits_data, digits_config, monkeypatch
):
    """Resuming used to load the checkpoint onto the training device, so on a GPU the RNG
    states arrived as CUDA tensors, which torch.set_rng_state, Generator.set_state and NumPy
    reject: resume crashed for every method. Without a GPU here, a trainer whose device is
    `meta` (any device but the CPU) must still restore from CPU byte tensors."""
    overrides = [
        "method.name=pgd_at",
        "model.arch=digits_cnn_small",
        "optim.epochs=1",
        "attack.steps=1",
        "data.batch_size=256",
        "eval.val_attack_steps=0",
    ]
    config = digits_config(tmp_path, overrides)
    build_trainer(config, digits_data).fit(resume=False)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["rng"]["ranks"][0]

    fresh = build_trainer(config, digits_data)
    fresh.device = torch.device("meta")
    restored: list[dict] = []
    real_restore = trainer_module.restore_rng_state

    def spy(state, generators, device=None):
        restored.append(state)
        real_restore(state, generators, device)

    monkeypatch.setattr(trainer_module, "restore_rng_state", spy)
    fresh.fit(resume=True)  # the run is complete: it loads, exports and stops

    assert len(restored) == 1
    state = restored[0]
    byte_states = [state["torch"], *state["generators"].values()]
    assert set(state["generators"]) == set(fresh.generators()) >= {"data", "augment"}
    assert all(t.device.type == "cpu" and t.dtype == torch.uint8 for t in byte_states)
    assert all(t.device.type == "cpu" for t in _tensors_in(state))
    # ... and they really were restored: every generator holds the state of the checkpoint.
    for name, generator in fresh.generators().items():
        assert torch.equal(generator.get_state(), saved["generators"][name]), name
    assert torch.equal(torch.get_rng_state(), saved["torch"])


def test_resume_refuses_a_schedule_of_another_length(tmp_path, digits_data, digits_config):
    overrides = ["method.name=natural", "model.arch=digits_cnn_small", "optim.epochs=1"]
    build_trainer(digits_config(tmp_path, [*overrides, "data.batch_size=256"]), digits_data).fit()
    other = build_trainer(digits_config(tmp_path, [*overrides, "data.batch_size=128"]), digits_data)
    with pytest.raises(ValueError, match="iterations per epoch"):
        other.fit(resume=True)


def test_the_global_batch_must_split_evenly_over_the_ranks(
    tmp_path, digits_data, digits_config, monkeypatch
):
    monkeypatch.setattr(trainer_module, "world_size", lambda: 3)
    with pytest.raises(ConfigError, match=r"data.batch_size: 64 .* 3 data-parallel ranks"):
        build_trainer(digits_config(tmp_path, ["data.batch_size=64"]), digits_data)


# -- kill -9 and resume through the command line ---------------------------------------------------
CLI_EPOCHS = 6
CLI_OVERRIDES = [
    "method.name=pgd_at",
    "model.arch=digits_cnn_small",
    f"optim.epochs={CLI_EPOCHS}",
    "optim.lr=0.05",
    "attack.steps=2",
    "data.batch_size=256",
    "eval.val_attack_steps=2",
    "device=cpu",
    "progress=false",
    "seed=5",
]


def _train_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "gacd.cli", "train", *CLI_OVERRIDES, f"out={out}"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _wait_for_epoch(proc: subprocess.Popen, checkpoint: Path, epoch: int, timeout: float) -> int:
    """Poll the checkpoint until it records `epoch` or more; return the epoch seen, or -1
    when the process ended first."""
    deadline = time.monotonic() + timeout
    seen_mtime = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return -1
        if checkpoint.exists():
            mtime = checkpoint.stat().st_mtime_ns
            if mtime != seen_mtime:
                seen_mtime = mtime
                found = load_checkpoint(checkpoint)["epoch"]  # atomic: never half-written
                if found >= epoch:
                    return found
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint of epoch {epoch} after {timeout} s")


@pytest.mark.slow
def test_sigkill_and_resume_gives_bit_identical_weights(tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    # The uninterrupted run and the run to kill go side by side (one thread each).
    run_a = subprocess.Popen(
        _train_command(out_a), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    run_b = subprocess.Popen(
        _train_command(out_b),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        epoch = _wait_for_epoch(run_b, out_b / "checkpoint.pt", 2, timeout=240)
        run_b.send_signal(signal.SIGKILL)
        run_b.wait(timeout=30)
    finally:
        if run_b.poll() is None:
            run_b.kill()
            run_b.wait()
    assert epoch != -1, (
        f"run B ended (rc {run_b.returncode}) before it could be killed: give it more or "
        "slower epochs"
    )
    assert run_b.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(out_b / "checkpoint.pt")["epoch"]
    assert 2 <= killed_at < CLI_EPOCHS, killed_at
    assert not (out_b / "model_last.pt").exists()

    resumed = subprocess.run(
        _train_command(out_b), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    _, stderr_a = run_a.communicate(timeout=300)
    assert run_a.returncode == 0, stderr_a.decode()

    a = load_checkpoint(out_a / "model_last.pt")["state_dict"]
    b = load_checkpoint(out_b / "model_last.pt")["state_dict"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"weights differ after kill + resume: {different}"

    records_a = read_metrics(out_a / "metrics.jsonl")
    records_b = [json.loads(line) for line in (out_b / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records_b] == list(range(1, CLI_EPOCHS + 1))
    assert _without_timing(records_b) == _without_timing(records_a)
    assert load_checkpoint(out_b / "checkpoint.pt")["epoch"] == CLI_EPOCHS
