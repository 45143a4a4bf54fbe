"""Data-parallel training through torchrun with the gloo backend on CPU: two ranks train
like one process with the same global batch, keep identical state, draw their own random
streams, resume exactly, and split validation and evaluation between them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gacd.engine.distributed as distributed
from conftest import TEACHER_OVERRIDES, TINY_EXPERIMENT_BASE
from ddp_worker import trace_steps, validation_pgd5
from gacd.config import load_run_config
from gacd.data import Augment, augment_batch
from gacd.engine.checkpoint import load_checkpoint
from gacd.engine.distributed import sync_batchnorm
from gacd.engine.export import export_model, load_model
from gacd.engine.logging import read_metrics
from gacd.errors import ConfigError
from gacd.models import build_model
from gacd.training import build_trainer

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
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    failures = [line for line in done.stderr.splitlines() if line.startswith("[rank")]
    assert done.returncode == 0, "\n".join(failures[:60]) or done.stderr[-4000:]


def _assert_ranks_equal(out: Path) -> dict[str, torch.Tensor]:
    s0 = torch.load(out / "rank0_state.pt", weights_only=True)
    s1 = torch.load(out / "rank1_state.pt", weights_only=True)
    assert s0.keys() == s1.keys()
    for key in s0:
        assert torch.equal(s0[key], s1[key]), f"ranks disagree on {key}"
    return s0


# The digits teacher's best validation PGD accuracy (TEACHER_OVERRIDES, one process) over
# seeds 0-3 was 66.4, 69.2, 67.1, 69.2 (sd 1.4 points; one validation image is 0.7): two
# ranks must land within 6 points (about 3 sd of a difference of two runs) of seed 0's.
VAL_ADV_NOISE = 6.0


@pytest.mark.slow
def test_pgd_at_ranks_stay_identical_and_match_one_process(
    tmp_path: Path, digits_teacher_path: Path
) -> None:
    """The conftest teacher (PGD-AT, one process) trained again on two ranks."""
    out = tmp_path / "at"
    _torchrun(out, TEACHER_OVERRIDES, "--watch-syncs")
    _assert_ranks_equal(out)
    for r in (0, 1):  # DDP averaged the gradients, and never inside an attack
        syncs = json.loads((out / f"syncs_rank{r}.json").read_text())
        assert syncs["all_reduces"] > 0 and syncs["during_attack"] == 0, syncs
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = len(records)
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))  # rank 0 alone writes
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert (out / "model_last.pt").is_file()
    one = read_metrics(digits_teacher_path.parent / "metrics.jsonl")
    assert len(one) == epochs
    best_two = max(r["val_adv"] for r in records)
    best_one = max(r["val_adv"] for r in one)
    assert abs(best_two - best_one) <= VAL_ADV_NOISE, (best_two, best_one)


# Natural training of a model without BatchNorm: one process and two ranks with the same
# global batch take the same steps (up to float rounding in the gradient averaging).
EQUIVALENCE_OVERRIDES = [
    "method.name=natural",
    "model.arch=digits_cnn_small",
    "model.kwargs={batch_norm: false}",
    "optim.epochs=2",
    "optim.lr=0.05",
    "data.batch_size=64",
]
STEP_TOLERANCE = 1e-6  # measured: at most 3e-8 over 40 steps


@pytest.mark.slow
def test_two_ranks_train_step_for_step_like_one_process(
    tmp_path: Path, digits_teacher_path: Path
) -> None:
    two = tmp_path / "two"
    _torchrun(two, EQUIVALENCE_OVERRIDES, "--trace", "--evaluate", str(digits_teacher_path))
    config = load_run_config(
        None, [f"out={tmp_path / 'one'}", "progress=false", *EQUIVALENCE_OVERRIDES]
    )
    trainer = build_trainer(config)
    trace = trace_steps(trainer)
    result = trainer.fit(resume=False)

    one = torch.stack(trace)
    rank0, rank1 = (torch.load(two / f"trace_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(rank0, rank1)
    assert one.shape == rank0.shape and len(one) == 2 * trainer.iters_per_epoch
    # The weights travel far further than the tolerance, and the two runs stay together.
    assert float((one[-1] - one[0]).abs().max()) > 1000 * STEP_TOLERANCE
    per_step = (one - rank0).abs().max(dim=1).values
    assert float(per_step.max()) < STEP_TOLERANCE, per_step
    two_records = read_metrics(two / "metrics.jsonl")
    for a, b in zip(result.history, two_records, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_nat"] == pytest.approx(b["val_nat"], abs=100 / len(trainer.val))

    # Evaluation split over the two ranks: each attacked its share of the batches, and
    # together they give exactly the one-process accuracy.
    shares = [
        json.loads((two / f"evaluation_rank{r}.json").read_text())["attacked_batches"]
        for r in (0, 1)
    ]
    assert all(shares) and sum(map(sum, shares)) == len(trainer.val)
    split_result = json.loads((two / "evaluation.json").read_text())["pgd5"]
    alone = validation_pgd5(load_model(digits_teacher_path), trainer.val, across_ranks=False)
    assert split_result == alone


@pytest.mark.slow
def test_gacd_banks_and_z_identical_across_ranks(tmp_path: Path) -> None:
    teacher_dir = tmp_path / "teacher"
    from gacd.config import load_run_config
    from gacd.training import train

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
    moved = tmp_path / "moved"
    shutil.copytree(cut, moved)  # the checkpoint of epoch 2, resumed below by one process
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

    # One process takes over the two ranks' run: the global batches and the schedule are
    # the same, the data order continues exactly, each rank's own streams are reseeded.
    config = load_run_config(None, [f"out={moved}", "progress=false", *STREAM_OVERRIDES])
    trainer = build_trainer(config)
    with pytest.warns(UserWarning, match="2 data-parallel ranks on 1"):
        trainer.load_state_dict(checkpoint)
    saved_rank0 = saved["ranks"][0]["generators"]
    assert torch.equal(trainer.generator.get_state(), saved_rank0["data"])
    assert not torch.equal(trainer.augment_generator.get_state(), saved_rank0["augment"])
    with pytest.warns(UserWarning, match="reseeded"):
        result = build_trainer(config).fit(resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    uninterrupted = read_metrics(full / "metrics.jsonl")
    assert _without_timing(result.history[:2]) == _without_timing(uninterrupted[:2])


def test_sync_bn_only_with_several_ranks_and_only_on_gpus(tmp_path: Path, monkeypatch) -> None:
    model = build_model("digits_cnn_small", in_channels=1, num_classes=10, mean=(0.3,), std=(0.4,))
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms
    assert sync_batchnorm(model, torch.device("cpu")) is model  # one process: untouched
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match=r"sync_bn: .* GPUs only"):
        sync_batchnorm(model, torch.device("cpu"))
    with torch.no_grad():  # statistics worth carrying over
        model.train()(torch.rand(16, 1, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    synced = sync_batchnorm(model, torch.device("cuda"))  # converting needs no GPU
    converted = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(converted) == len(batchnorms)
    assert all(isinstance(m, nn.SyncBatchNorm) for m in converted)
    # The exported weights load into the plain architecture, unchanged.
    export_model(synced, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in loaded.modules())
    assert loaded.state_dict().keys() == before.keys()
    assert all(torch.equal(loaded.state_dict()[k], before[k]) for k in before)


def test_ddp_wraps_the_modules_a_method_trains_and_runs_its_step() -> None:
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = nn.Linear(3, 2)
            self.frozen = nn.Linear(3, 2).requires_grad_(False)
            self.bank = nn.Module()
            self.bank.register_buffer("rows", torch.zeros(5, 2))

        def step(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
            return self.student(batch).sum() + self.frozen(batch).sum(), {}, {}

    toy = Toy()
    wrapped = distributed.TrainedModules(toy)
    assert list(wrapped.parts) == ["student"]  # no frozen module, no bank buffers
    assert [n for n, _ in wrapped.named_buffers()] == []
    x = torch.rand(4, 3)
    assert torch.equal(wrapped(x)[0], toy.step(x)[0])
    toy.scale = nn.Parameter(torch.ones(()))  # trainable, but in no child module
    with pytest.raises(ValueError, match=r"\['scale'\] are not inside a child module"):
        distributed.TrainedModules(toy)


# `gacd run` of a small experiment: a teacher, KD, and GACD with its linear stage.
RUN_EXPERIMENT = {
    "name": "ranks",
    "smoke": True,
    "threads": 1,
    "seeds": [0],
    "attacks": ["natural", "pgd2"],
    "base": {**TINY_EXPERIMENT_BASE, "data": {"name": "digits", "batch_size": 128}},
    "stages": {"distill": {"method": {"ot_iterations": 5, "negatives": 64}}},
    "teachers": {"cnn": {"arch": "digits_cnn_small", "label": "small CNN"}},
    "students": {"archs": ["digits_cnn_small"], "methods": ["kd", "gacd"]},
}


def _gacd_run(config: Path, ranks: int) -> str:
    launcher = ["torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m"]
    cmd = [sys.executable, "-m", *(launcher if ranks > 1 else []), "gacd.cli", "run", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_gacd_run_under_torchrun_writes_what_one_process_writes(tmp_path: Path) -> None:
    import yaml

    outputs = {}
    for ranks in (1, 2):
        run = tmp_path / f"ranks{ranks}"
        config = tmp_path / f"ranks{ranks}.yaml"
        config.write_text(yaml.safe_dump({**RUN_EXPERIMENT, "out": str(run)}))
        stdout = _gacd_run(config, ranks)
        results = json.loads((run / "results.json").read_text())
        assert results["finished"]
        outputs[ranks] = (run, stdout, results)
    (one, _, one_res), (two, two_out, two_res) = outputs[1], outputs[2]
    # The same stages, trained and evaluated under the same attacks, recorded once.
    key = [(r["stage"], r["selection"], sorted(r["accuracy"])) for r in one_res["records"]]
    assert [(r["stage"], r["selection"], sorted(r["accuracy"])) for r in two_res["records"]] == key
    assert [s["stage"] for s in two_res["stages"]] == [s["stage"] for s in one_res["stages"]]
    assert all(s["status"] == "trained" for s in two_res["stages"])
    markers = sorted(p.relative_to(two) for p in two.rglob("stage.json"))
    assert markers == sorted(p.relative_to(one) for p in one.rglob("stage.json"))
    assert (two / "report.md").is_file()
    for run, ranks in ((one, 1), (two, 2)):  # the stages really trained data-parallel
        for checkpoint in run.rglob("checkpoint.pt"):
            assert load_checkpoint(checkpoint)["rng"]["world_size"] == ranks
    # One writer, one voice: each stage's progress line is printed once, not once per rank.
    for stage in (s["stage"] for s in two_res["stages"]):
        assert len(re.findall(rf"\] {re.escape(stage)}: trained", two_out)) == 1
    # A rerun under torchrun skips every stage on every rank (same decisions everywhere).
    again = _gacd_run(tmp_path / "ranks2.yaml", 2)
    assert re.findall(r"\] \S+: (\w+)", again) == ["skipped"] * len(two_res["stages"])
