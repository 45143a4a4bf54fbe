"""Data-parallel training through torchrun with the gloo backend on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gacd.config import load_run_config
from gacd.data import Augment, augment_batch
from gacd.engine.checkpoint import load_checkpoint
from gacd.engine.logging import read_metrics
from gacd.run import build_trainer

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(out: Path, overrides: list[str], *flags: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on a free local port
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(out),
        *flags,
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _assert_ranks_equal(out: Path) -> dict[str, torch.Tensor]:
    s0 = torch.load(out / "rank0_state.pt", weights_only=True)
    s1 = torch.load(out / "rank1_state.pt", weights_only=True)
    assert s0.keys() == s1.keys()
    for key in s0:
        assert torch.equal(s0[key], s1[key]), f"ranks disagree on {key}"
    return s0


@pytest.mark.slow
def test_pgd_at_ranks_stay_identical_and_learn(tmp_path: Path) -> None:
    out = tmp_path / "at"
    _torchrun(
        out,
        [
            "method.name=pgd_at",
            "model.arch=digits_cnn_small",
            "optim.epochs=3",
            "attack.steps=2",
            "data.batch_size=64",
        ],
    )
    _assert_ranks_equal(out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]  # rank 0 alone writes
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert (out / "model_last.pt").is_file()


@pytest.mark.slow
def test_gacd_banks_and_z_identical_across_ranks(tmp_path: Path) -> None:
    teacher_dir = tmp_path / "teacher"
    from gacd.config import load_run_config
    from gacd.run import train

    train(
        load_run_config(
            None,
            [
                f"out={teacher_dir}",
                "progress=false",
                "optim.epochs=2",
                "method.name=natural",
                "model.arch=digits_cnn_small",
            ],
        )
    )
    out = tmp_path / "gacd"
    _torchrun(
        out,
        [
            "method.name=gacd",
            f"teacher={teacher_dir / 'model_last.pt'}",
            "model.arch=digits_cnn_small",
            "optim.epochs=2",
            "attack.steps=2",
            "data.batch_size=64",
            "method.negatives=256",
        ],
    )
    state = _assert_ranks_equal(out)
    bank = state["teacher_bank.embeddings"]
    assert torch.allclose(bank.norm(dim=1), torch.ones(len(bank)), atol=1e-4)
    assert bool(state["z_student.initialised"])


# Crops, flips and a training attack: every random stream of a rank is in use.
STREAM_OVERRIDES = [
    "method.name=pgd_at",
    "model.arch=digits_cnn_small",
    "optim.epochs=3",
    "attack.steps=2",
    "data.batch_size=64",
    "data.crop_padding=1",
    "data.flip=true",
    "eval.val_attack_steps=2",
]


def _generator(state: torch.Tensor) -> torch.Generator:
    g = torch.Generator()
    g.set_state(state)
    return g


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in records]


@pytest.mark.slow
def test_each_rank_draws_its_own_streams_and_resumes_them(tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    _torchrun(full, STREAM_OVERRIDES, "--record")
    first = [torch.load(full / f"record_rank{r}.pt", weights_only=True) for r in (0, 1)]
    augment = Augment(crop_padding=1, flip=True)

    def crop_and_flip(state: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return augment_batch(images, augment, _generator(state))

    # The recorded states replay what each rank trained on...
    for rec in first:
        assert torch.equal(
            crop_and_flip(rec["augment_state"], rec["augment_in"]), rec["augment_out"]
        )
    # ... and rank 1's stream crops and flips rank 0's first batch differently.
    rank0, rank1 = first
    assert not torch.equal(
        crop_and_flip(rank1["augment_state"], rank0["augment_in"]), rank0["augment_out"]
    )
    starts = [torch.rand(r["pgd_shape"], generator=_generator(r["pgd_state"])) for r in first]
    assert not torch.equal(*starts), "both ranks drew the same random start"

    # Interrupted after two epochs and resumed: the same weights as the uninterrupted run.
    _torchrun(cut, STREAM_OVERRIDES, "--interrupt-at", "2")
    checkpoint = load_checkpoint(cut / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and not (cut / "rank0_state.pt").exists()
    saved = checkpoint["rng"]
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2
    for name in ("augment", "method.generator"):
        a, b = (r["generators"][name] for r in saved["ranks"])
        assert not torch.equal(a, b), f"rank 1 saved rank 0's '{name}' stream"
    _torchrun(cut, STREAM_OVERRIDES, "--resume")
    for r in (0, 1):
        a = torch.load(full / f"rank{r}_state.pt", weights_only=True)
        b = torch.load(cut / f"rank{r}_state.pt", weights_only=True)
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert different == [], f"rank {r} differs after resume: {different}"
    assert _without_timing(read_metrics(cut / "metrics.jsonl")) == _without_timing(
        read_metrics(full / "metrics.jsonl")
    )

    # One process cannot take over the two ranks' streams: a clear refusal.
    config = load_run_config(None, [f"out={cut}", "progress=false", *STREAM_OVERRIDES])
    with pytest.raises(ValueError, match="written by 2 data-parallel rank"):
        build_trainer(config).load_state_dict(checkpoint)
