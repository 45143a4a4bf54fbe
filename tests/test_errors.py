"""Bad input, end to end: every case is one line naming the problem, a non-zero exit, no
traceback, and nothing half-written; a real bug keeps its traceback."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from format_writers import write_cifar10, write_idx_mnist
from gacd.cli import main
from gacd.engine.checkpoint import load_checkpoint

GACD = Path(sys.executable).parent / "gacd"
TRAIN = ["progress=false", "device=cpu"]


class _Payload:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _yaml(tmp: Path, text: str) -> Path:
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


# Each case: (argv builder given tmp dir and a trained model path, expected exit, phrases).
Case = Callable[[Path, Path], list[str]]
CASES: dict[str, tuple[Case, int, list[str]]] = {
    "unknown key": (lambda t, m: ["train", "bogus=1", f"out={t}/o", *TRAIN], 2, ["'bogus'"]),
    "unknown method": (
        lambda t, m: ["train", "method.name=nope", f"out={t}/o", *TRAIN],
        2,
        ["method.name", "'nope'", "pgd_at"],
    ),
    "unknown architecture": (
        lambda t, m: ["train", "model.arch=nope", f"out={t}/o", *TRAIN],
        2,
        ["model.arch", "'nope'", "digits_cnn"],
    ),
    "unknown dataset": (
        lambda t, m: ["train", "data.name=nope", f"out={t}/o", *TRAIN],
        2,
        ["data.name", "'nope'", "digits"],
    ),
    "malformed YAML": (
        lambda t, m: ["train", "--config", str(_yaml(t, "optim: [1,\n")), f"out={t}/o"],
        2,
        ["not valid YAML"],
    ),
    "YAML not a mapping": (
        lambda t, m: ["train", "--config", str(_yaml(t, "- 1\n- 2\n")), f"out={t}/o"],
        2,
        ["top level must be a mapping"],
    ),
    "missing YAML": (
        lambda t, m: ["train", "--config", str(t / "nope.yaml"), f"out={t}/o"],
        2,
        ["config file not found", "nope.yaml"],
    ),
    "missing data files": (
        lambda t, m: ["train", "data.name=cifar10", f"data.root={t}/empty", f"out={t}/o", *TRAIN],
        2,
        ["cifar-10", "data.download=true"],
    ),
    "corrupt data files": (
        lambda t, m: [
            "train",
            "data.name=cifar10",
            f"data.root={_corrupt_cifar(t)}",
            f"out={t}/o",
            *TRAIN,
        ],
        2,
        ["data_batch_1"],
    ),
    "truncated data file": (
        lambda t, m: [
            "train",
            "data.name=mnist",
            f"data.root={_truncated_mnist(t)}",
            f"out={t}/o",
            *TRAIN,
        ],
        2,
        ["train-images-idx3-ubyte"],
    ),
    "epochs 0": (
        lambda t, m: ["train", "optim.epochs=0", f"out={t}/o", *TRAIN],
        2,
        ["optim.epochs", "0", ">= 1"],
    ),
    "epochs -1": (
        lambda t, m: ["train", "optim.epochs=-1", f"out={t}/o", *TRAIN],
        2,
        ["optim.epochs", "-1"],
    ),
    "batch size 0": (
        lambda t, m: ["train", "data.batch_size=0", f"out={t}/o", *TRAIN],
        2,
        ["data.batch_size", "0"],
    ),
    "negative eps": (
        lambda t, m: ["train", "attack.eps=-0.1", f"out={t}/o", *TRAIN],
        2,
        ["attack.eps", "-0.1", "0 <= eps <= 1"],
    ),
    "GACD option": (
        lambda t, m: [
            "train",
            "method.name=gacd",
            "method.temperature=0",
            f"teacher={m}",
            f"out={t}/o",
            *TRAIN,
        ],
        2,
        ["method.temperature", "0"],
    ),
    "GACD warm-up": (
        lambda t, m: [
            "train",
            "method.name=gacd",
            "method.temperature_warmup=-1",
            f"teacher={m}",
            f"out={t}/o",
            *TRAIN,
        ],
        2,
        ["method.temperature_warmup", "-1", "an integer >= 0"],
    ),
    "max samples 0": (
        lambda t, m: ["evaluate", str(m), "--max-samples", "0", "--out", f"{t}/o"],
        2,
        ["eval.max_samples", "0"],
    ),
    "evaluate a YAML file": (
        lambda t, m: ["evaluate", str(_yaml(t, "a: 1\n")), "--out", f"{t}/o"],
        2,
        ["not a PyTorch zip archive"],
    ),
    "evaluate random bytes": (
        lambda t, m: ["evaluate", str(_write(t / "r.pt", os.urandom(4096))), "--out", f"{t}/o"],
        2,
        ["not a PyTorch zip archive"],
    ),
    "evaluate an empty file": (
        lambda t, m: ["evaluate", str(_write(t / "e.pt", b"")), "--out", f"{t}/o"],
        2,
        ["empty file"],
    ),
    "evaluate a pickle": (
        lambda t, m: [
            "evaluate",
            str(_write(t / "p.pkl", pickle.dumps({"a": 1}))),
            "--out",
            f"{t}/o",
        ],
        2,
        ["not a PyTorch zip archive"],
    ),
    "evaluate a truncated model": (
        lambda t, m: [
            "evaluate",
            str(_write(t / "cut.pt", m.read_bytes()[: m.stat().st_size // 2])),
            "--out",
            f"{t}/o",
        ],
        2,
        ["cut.pt"],
    ),
    "evaluate a training checkpoint": (
        lambda t, m: ["evaluate", str(_training_checkpoint(t)), "--out", f"{t}/o"],
        2,
        ["not an exported gacd model", "model_best.pt"],
    ),
    "evaluate a missing model": (
        lambda t, m: ["evaluate", str(t / "nope.pt"), "--out", f"{t}/o"],
        2,
        ["nope.pt", "not found"],
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _corrupt_cifar(tmp: Path) -> Path:
    root = tmp / "cifar"
    write_cifar10(root)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"garbage, not a pickle")
    return root


def _truncated_mnist(tmp: Path) -> Path:
    root = tmp / "mnist"
    write_idx_mnist(root)
    images = root / "mnist" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    return root


def _training_checkpoint(tmp: Path) -> Path:
    path = tmp / "checkpoint.pt"
    torch.save({"format": "gacd-train-v1", "epoch": 1}, path)
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_named_line(name, tmp_path, digits_undefended_path, capsys):
    build, code, phrases = CASES[name]
    argv = build(tmp_path, digits_undefended_path)
    before = _files(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gacd {argv[0]}: error: "), err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert _files(tmp_path) == before  # nothing written, nothing changed
    assert not (tmp_path / "o").exists()


def test_a_malicious_model_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "model.pt"
    torch.save({"format": "gacd-model-v1", "spec": _Payload(marker)}, evil)
    assert main(["evaluate", str(evil), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "weights_only" not in err
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


def test_a_diverged_run_names_epoch_and_step(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["train", "method.name=natural", "optim.lr=1e30", "optim.epochs=3", f"out={out}"]
    assert main([*argv, *TRAIN]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "training diverged" in lines[0] and "epoch 1, step" in lines[0]
    assert not (out / "checkpoint.pt").exists()  # the diverged epoch was never saved


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only GacdError is reported as bad input: a ValueError from inside is a bug."""
    import gacd.training

    def broken(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(gacd.training, "build_trainer", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["train", "out=/nonexistent/never", *TRAIN])


@pytest.mark.skipif(not GACD.exists(), reason="the gacd console script is not installed here")
def test_ctrl_c_exits_130_in_one_line_and_leaves_whole_files(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [str(GACD), "train", "method.name=pgd_at", "optim.epochs=200", f"out={out}", *TRAIN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        line = proc.stdout.readline()  # not a terminal: one line per epoch
        assert "epoch 1/200" in line, line
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err
    assert "Traceback" not in err
    assert not list(out.glob(".*.tmp"))  # no half-written file
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1
