"""A run directory belongs to one config: the same config resumes, raising the epoch count
extends, anything else is refused before a byte changes; --no-resume starts afresh."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gacd.cli import main
from gacd.engine.checkpoint import load_checkpoint
from gacd.engine.export import load_model_meta

BASE = [
    "method.name=natural",
    "model.arch=digits_cnn_small",
    "eval.val_attack_steps=0",
    "progress=false",
    "device=cpu",
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    """A finished 2-epoch run."""
    out = tmp_path / "run"
    assert main(["train", *BASE, "optim.epochs=2", f"out={out}"]) == 0
    return out


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("optim.lr=0.01", "optim.lr 0.1 -> 0.01"),
        ("method.name=pgd_at", "method.name 'natural' -> 'pgd_at'"),
        ("model.arch=digits_cnn", "model.arch 'digits_cnn_small' -> 'digits_cnn'"),
        ("optim.epochs=1", "optim.epochs 2 -> 1"),
        ("seed=3", "seed 0 -> 3"),
    ],
)
def test_another_config_is_refused_and_nothing_changes(finished, capsys, change, named):
    before = _files(finished)
    capsys.readouterr()
    assert main(["train", *BASE, "optim.epochs=2", f"out={finished}", change]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert named in err[0] and "another out=" in err[0] and "--no-resume" in err[0]
    assert _files(finished) == before


def test_the_same_config_resumes_and_says_so(finished, capsys):
    capsys.readouterr()
    # Settings that do not change what is trained (progress, device, the final attacks) and
    # method options spelled out at their defaults are the same run.
    same = ["eval.attacks=[natural]", "progress=true", "method.name=natural"]
    assert main(["train", *BASE, "optim.epochs=2", f"out={finished}", *same]) == 0
    assert "resuming from epoch 2" in capsys.readouterr().out
    assert load_checkpoint(finished / "checkpoint.pt")["epoch"] == 2


def test_more_epochs_extend_the_run(finished, capsys):
    capsys.readouterr()
    assert main(["train", *BASE, "optim.epochs=3", f"out={finished}"]) == 0
    assert "resuming from epoch 2 (extending to 3)" in capsys.readouterr().out
    assert load_model_meta(finished / "model_last.pt")["epoch"] == 3
    assert yaml.safe_load((finished / "config.yaml").read_text())["optim"]["epochs"] == 3


def test_no_resume_discards_the_old_run(finished):
    assert main(["train", *BASE, "optim.epochs=1", f"out={finished}", "--no-resume"]) == 0
    assert load_checkpoint(finished / "checkpoint.pt")["epoch"] == 1
    assert load_model_meta(finished / "model_last.pt")["epoch"] == 1
    assert yaml.safe_load((finished / "config.yaml").read_text())["optim"]["epochs"] == 1
    lines = (finished / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the old run's epochs are gone
