"""One command to check a GPU: training speed of the real engine, and resume on the device.

    python benchmarks/gpu_check.py                     # one H100/H200: a few minutes, < 8
    python benchmarks/gpu_check.py --tiny --device cpu # tiny sizes on the CPU (the test suite)

Everything runs through `gacd.training.build_trainer` and `Trainer.fit` on synthetic CIFAR-size
data (random uint8 images, 10 random labels, crop + flip augmentation), so it times the
engine users run:

  1. PGD-10 adversarial training (pgd_at) of ResNet-18, images/s over one epoch after a
     warm-up, (a) fp32 eager, (b) bf16 autocast + channels_last, (c) (b) + torch.compile;
  2. a GACD training step (ResNet-18 student, WRN-34-10 teacher, k = 16,384 negatives,
     M = 50,000 bank rows, OT positives by PGD-10) in setting (b), and its cost relative
     to the PGD-AT step of the same student in the same setting;
  3. resume on the device: a short GACD run interrupted after its first epoch and resumed
     must end with the weights of an uninterrupted run - bit for bit, as the runs use
     deterministic kernels (torch.use_deterministic_algorithms, warn-only: any kernel without
     a deterministic version is listed, and then the weights must agree within --tolerance);
  4. peak GPU memory of each.

It prints one table and writes the numbers to --json. Targets on one H100-class GPU:
PGD-10 AT of ResNet-18 at >= 10,000 images/s in bf16 (best of (b), (c)); a GACD step at
<= 1.5x the PGD-AT step (the WRN-34-10 teacher's forward alone adds about 0.35x). On a CPU
the targets do not apply (the tiny sizes only prove the script runs).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# cuBLAS needs this before its first use to run deterministically (the resume check).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import torch

from gacd.config import load_run_config
from gacd.data import Augment, DatasetDefaults, DeviceSplit
from gacd.data.arrays import ArraySplit, RawDataset
from gacd.engine.checkpoint import load_checkpoint
from gacd.engine.export import export_model
from gacd.engine.trainer import CHECKPOINT, MODEL_LAST, Trainer
from gacd.models import build_model
from gacd.training import PreparedData, build_trainer

PGD_TARGET_IMAGES_PER_S = 10_000.0
GACD_TARGET_COST = 1.5
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
SETTINGS = {
    "a": ("fp32 eager", ["amp=false", "channels_last=false", "compile=false"]),
    "b": ("bf16 + channels_last", ["amp=true", "channels_last=true", "compile=false"]),
    "c": ("bf16 + channels_last + compile", ["amp=true", "channels_last=true", "compile=true"]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (CPU, the test suite)")
    p.add_argument("--arch", default="resnet18", help="student architecture")
    p.add_argument("--teacher-arch", default="wrn_34_10", help="GACD teacher")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--train-size", type=int, default=50_000, help="images per epoch; M")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--negatives", type=int, default=16_384, help="GACD k")
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--settings", default="abc", help="which PGD-AT settings to time")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    p.add_argument("--resume-train-size", type=int, default=2048)
    p.add_argument("--resume-batch-size", type=int, default=256)
    p.add_argument("--resume-teacher-arch", default="resnet20")
    p.add_argument("--tolerance", type=float, default=1e-2, help="resume: max relative L2")
    p.add_argument("--json", default="gpu_check.json", help="where to write the numbers")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tiny:
        args.arch, args.teacher_arch, args.resume_teacher_arch = "resnet20", "resnet20", "resnet20"
        args.batch_size, args.train_size, args.image_size = 16, 64, 8
        args.negatives, args.attack_steps, args.warmup = 16, 1, 1
        args.resume_train_size, args.resume_batch_size = 64, 16
        args.compile_backend = "eager"  # dynamo's graph capture, without code generation
    return args


# -- data and runs ---------------------------------------------------------------------------
def synthetic_data(n: int, size: int, device: torch.device, seed: int) -> PreparedData:
    """CIFAR-shaped random uint8 images with random labels, held on `device`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    train = ArraySplit(images, rng.integers(0, 10, size=n))
    empty = ArraySplit(images[:0], train.labels[:0])
    raw = RawDataset("synthetic", train, empty, num_classes=10, mean=MEAN, std=STD)
    augment = Augment(crop_padding=4 if size >= 16 else 1, flip=True)
    defaults = DatasetDefaults(eps=8 / 255, step_size=2 / 255, augment=augment, arch="resnet18")
    split = functools.partial(DeviceSplit, pixel_max=255, device=device)
    return PreparedData(raw, defaults, split(train), split(empty), split(empty), augment)


def export_teacher(arch: str, path: Path) -> str:
    """A randomly initialised teacher, exported as `gacd` exports trained ones."""
    torch.manual_seed(1)
    export_model(build_model(arch, in_channels=3, num_classes=10, mean=MEAN, std=STD), path)
    return str(path)


def make_trainer(
    args: argparse.Namespace, data: PreparedData, out: Path, overrides: list[str]
) -> Trainer:
    config = load_run_config(
        None,
        [
            f"out={out}",
            f"device={args.device}",
            f"seed={args.seed}",
            "progress=false",
            f"model.arch={args.arch}",
            f"attack.steps={args.attack_steps}",
            "eval.val_attack_steps=0",
            "optim.lr=0.05",
            *overrides,
        ],
    )
    return build_trainer(config, data)


@contextlib.contextmanager
def compile_backend(name: str) -> Iterator[None]:
    """torch.compile with `name` for the runs inside (the engine calls torch.compile)."""
    original = torch.compile
    if name != "inductor":
        torch.compile = functools.partial(original, backend=name)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = original  # type: ignore[assignment]


class StepClock:
    """A timestamp after every optimiser step: CUDA events (no sync in the loop) or the
    host clock on a CPU."""

    def __init__(self, trainer: Trainer) -> None:
        self.cuda = trainer.device.type == "cuda"
        self.marks: list[Any] = []
        method = trainer.method
        after_step = method.after_step

        def after_step_with_mark(batch: Any) -> None:
            after_step(batch)
            self.marks.append(self._mark())

        method.after_step = after_step_with_mark  # type: ignore[method-assign]

    def _mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, first: int, last: int) -> float:
        """Seconds from the end of step `first` to the end of step `last` (0-based)."""
        a, b = self.marks[first], self.marks[last]
        if self.cuda:
            torch.cuda.synchronize()
            return a.elapsed_time(b) / 1e3
        return b - a


def timed_epoch(
    args: argparse.Namespace, data: PreparedData, out: Path, overrides: list[str]
) -> dict[str, Any]:
    """One epoch of a fresh run; images/s over the steps after the warm-up."""
    cuda = torch.device(args.device).type == "cuda"
    release()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer = make_trainer(args, data, out, ["optim.epochs=1", *overrides])
    clock = StepClock(trainer)
    trainer.fit(resume=False)
    steps = len(clock.marks)
    warmup = min(args.warmup, steps - 1)
    if warmup < 1:
        raise SystemExit(f"one epoch gives {steps} steps: need more than --warmup {args.warmup}")
    seconds = clock.seconds(warmup - 1, steps - 1)
    timed = steps - warmup
    batch = trainer.batch_size
    result = {
        "images_per_s": timed * batch / seconds,
        "ms_per_step": 1e3 * seconds / timed,
        "steps_timed": timed,
        "warmup_steps": warmup,
        "batch_size": batch,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "wall_seconds": time.perf_counter() - started,
    }
    del trainer, clock
    release()
    return result


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- resume ----------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def resume_check(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """GACD for 2 epochs, uninterrupted and interrupted after epoch 1 + resumed."""
    device = torch.device(args.device)
    data = synthetic_data(args.resume_train_size, args.image_size, device, args.seed + 1)
    teacher = export_teacher(args.resume_teacher_arch, root / "resume_teacher.pt")
    overrides = [
        "method.name=gacd",
        f"teacher={teacher}",
        "method.negatives=1024",
        f"data.batch_size={args.resume_batch_size}",
        "optim.epochs=2",
        "amp=true",
        "channels_last=true",
    ]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    previous = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_trainer(args, data, root / "full", overrides).fit(resume=False)
            cut = make_trainer(args, data, root / "cut", overrides)
            run_epoch = cut._train_epoch

            def stop_at_second(epoch: int, epochs: int) -> dict[str, Any]:
                if epoch == 1:
                    raise _Stop
                return run_epoch(epoch, epochs)

            cut._train_epoch = stop_at_second  # type: ignore[method-assign]
            with contextlib.suppress(_Stop):
                cut.fit(resume=False)
            saved_epoch = load_checkpoint(root / "cut" / CHECKPOINT)["epoch"]
            make_trainer(args, data, root / "cut", overrides).fit(resume=True)
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = benchmark
    nondeterministic = sorted(
        {str(w.message).split("\n")[0] for w in caught if "deterministic" in str(w.message)}
    )
    full = _resume_state(root / "full")
    resumed = _resume_state(root / "cut")
    different = [k for k in full if not torch.equal(full[k], resumed[k])]
    floats = [k for k in full if full[k].is_floating_point()]
    num = math.sqrt(sum(float((full[k] - resumed[k]).double().pow(2).sum()) for k in floats))
    den = math.sqrt(sum(float(full[k].double().pow(2).sum()) for k in floats))
    relative = num / max(den, 1e-30)
    exact = not different
    return {
        "method": "gacd",
        "interrupted_at_epoch": saved_epoch,
        "tensors_compared": len(full),
        "exact": exact,
        "tensors_differing": different,
        "relative_l2_difference": relative,
        "tolerance": args.tolerance,
        "nondeterministic_kernels": nondeterministic,
        "passed": exact or (bool(nondeterministic) and relative <= args.tolerance),
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def _resume_state(out: Path) -> dict[str, torch.Tensor]:
    """The exported student and the method's state (heads, bank, Z) at the end of a run."""
    state = {f"model.{k}": v for k, v in load_checkpoint(out / MODEL_LAST)["state_dict"].items()}
    method = load_checkpoint(out / CHECKPOINT)["method"]
    state.update({f"method.{k}": v for k, v in method.items() if isinstance(v, torch.Tensor)})
    return state


# -- report ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: CUDA is not available here")
        torch.cuda.set_device(device)  # events and memory statistics follow the current device
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "settings": {
            k: getattr(args, k)
            for k in (
                "arch",
                "teacher_arch",
                "batch_size",
                "train_size",
                "image_size",
                "negatives",
                "attack_steps",
                "warmup",
                "compile_backend",
            )
        },
        "kernels": {
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        },
        "pgd_at": {},
    }
    with tempfile.TemporaryDirectory(prefix="gacd_gpu_check_") as tmp:
        root = Path(tmp)
        data = synthetic_data(args.train_size, args.image_size, device, args.seed)
        for key in args.settings:
            name, overrides = SETTINGS[key]
            log(f"PGD-{args.attack_steps} AT, {args.arch}, ({key}) {name} ...")
            with compile_backend(args.compile_backend):
                result = timed_epoch(
                    args,
                    data,
                    root / f"pgd_at_{key}",
                    ["method.name=pgd_at", f"data.batch_size={args.batch_size}", *overrides],
                )
            if key == "c":
                torch.compiler.reset()  # compiled graphs hold the model alive
            report["pgd_at"][key] = {"setting": name, **result}
        log(f"GACD, {args.arch} student, {args.teacher_arch} teacher, (b) ...")
        teacher = export_teacher(args.teacher_arch, root / "teacher.pt")
        gacd = timed_epoch(
            args,
            data,
            root / "gacd",
            [
                "method.name=gacd",
                f"teacher={teacher}",
                f"method.negatives={args.negatives}",
                f"data.batch_size={args.batch_size}",
                *SETTINGS["b"][1],
            ],
        )
        if "b" in report["pgd_at"]:
            gacd["cost_vs_pgd_at_b"] = gacd["ms_per_step"] / report["pgd_at"]["b"]["ms_per_step"]
        report["gacd"] = {"setting": SETTINGS["b"][0], "k": args.negatives, "M": len(data.train)}
        report["gacd"].update(gacd)
        log("resume on the device (GACD, deterministic kernels) ...")
        report["resume"] = resume_check(args, root)
    report["targets"] = targets(report, device)
    report["wall_seconds"] = time.perf_counter() - started
    return report


def targets(report: dict[str, Any], device: torch.device) -> dict[str, Any]:
    on_gpu = device.type == "cuda"
    bf16 = [report["pgd_at"][k]["images_per_s"] for k in "bc" if k in report["pgd_at"]]
    cost = report["gacd"].get("cost_vs_pgd_at_b")
    return {
        "pgd_at_bf16_images_per_s": {
            "target": f">= {PGD_TARGET_IMAGES_PER_S:.0f} on one H100-class GPU",
            "value": max(bf16) if bf16 else None,
            "met": (max(bf16) >= PGD_TARGET_IMAGES_PER_S) if on_gpu and bf16 else None,
        },
        "gacd_cost_vs_pgd_at": {
            "target": f"<= {GACD_TARGET_COST}x",
            "value": cost,
            "met": (cost <= GACD_TARGET_COST) if on_gpu and cost is not None else None,
        },
        "resume_matches": {
            "target": "bit-exact (within --tolerance where kernels are nondeterministic)",
            "met": report["resume"]["passed"],
        },
    }


def table(report: dict[str, Any]) -> str:
    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value / 1024:.2f}"

    def verdict(met: bool | None) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[met]

    t = report["targets"]
    rows = []
    for key, r in report["pgd_at"].items():
        met = t["pgd_at_bf16_images_per_s"]["met"] if key in "bc" else None
        target = f">= {PGD_TARGET_IMAGES_PER_S:.0f} img/s (b or c)" if key in "bc" else ""
        rows.append(
            [
                f"PGD-AT ({key}) {r['setting']}",
                f"{r['images_per_s']:.0f}",
                f"{r['ms_per_step']:.1f}",
                mib(r["peak_mib"]),
                target,
                verdict(met) if key in "bc" else "",
            ]
        )
    g = report["gacd"]
    cost = g.get("cost_vs_pgd_at_b")
    cost_text = f"{cost:.2f}x PGD-AT (b)" if cost is not None else ""
    rows.append(
        [
            f"GACD (b) k={g['k']} M={g['M']}",
            f"{g['images_per_s']:.0f}",
            f"{g['ms_per_step']:.1f}",
            mib(g["peak_mib"]),
            f"<= {GACD_TARGET_COST}x; {cost_text}",
            verdict(t["gacd_cost_vs_pgd_at"]["met"]),
        ]
    )
    r = report["resume"]
    detail = "bit-exact" if r["exact"] else f"rel. L2 {r['relative_l2_difference']:.2e}"
    rows.append(
        ["resume GACD after epoch 1", "", "", mib(r["peak_mib"]), detail, verdict(r["passed"])]
    )
    headers = ["check", "images/s", "ms/step", "peak GiB", "target / detail", "result"]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [
        f"gacd GPU check on {report['device']} (torch {report['torch']}), "
        f"{report['wall_seconds']:.0f} s",
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    if report["device"] == "cpu":
        lines.append("on a CPU the engine runs without autocast (bf16 is for GPUs only)")
    if r["nondeterministic_kernels"]:
        lines.append("nondeterministic kernels in the resume runs:")
        lines += [f"  {k}" for k in r["nondeterministic_kernels"]]
    return "\n".join(lines)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    print(table(report))
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
