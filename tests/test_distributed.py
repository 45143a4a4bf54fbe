"""Data-parallel training through torchrun with the gloo backend on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(out: Path, overrides: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        str(WORKER),
        str(out),
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
