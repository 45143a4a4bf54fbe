"""Time one GACD training step, split into its parts, on synthetic data.

    python benchmarks/gacd_step.py                      # CPU, resnet20, k = 16384
    python benchmarks/gacd_step.py --device cuda --arch resnet18 --teacher-arch wrn_34_10 \
        --batch-size 128 --attack-steps 10 --steps 20

Parts of a step (the same work as `GACD.step` + backward + optimiser + `after_step`):
  (a) attack       the positives x+ (`method.positives`: PGD on the feature objective)
  (b) models       teacher forward, student forward + heads, their backward, optimiser step
  (c) contrastive  negative sampling, bank scoring, NCE loss and its backward down to the
                   student embedding, bank update

Then the contrastive part alone through two paths, in the same run: the method's scoring
path (anchor @ bank.T, then gather the k columns) and the public gather path
(`nce_loss` on `bank.rows(idx)`, a [B, k, d] tensor), with the speedup of the first over
the second and, on CUDA, the peak memory of each.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from gacd.attacks import AttackSpec
from gacd.contrastive import nce_loss
from gacd.data import Batch
from gacd.methods import MethodContext, build_method, method_options
from gacd.methods.gacd import GACD
from gacd.methods.losses import teacher_confidence
from gacd.models import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--arch", default="resnet20", help="student architecture")
    p.add_argument("--teacher-arch", default=None, help="teacher architecture (default: --arch)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--negatives", type=int, default=16384, help="k")
    p.add_argument("--n-data", type=int, default=50000, help="bank size M (CIFAR: 50000)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--attack-steps", type=int, default=10, help="PGD steps for x+ (paper: 10)")
    p.add_argument(
        "--positive-attack", default="ot", choices=["ot", "misalign", "kl", "ce", "none"]
    )
    p.add_argument("--steps", type=int, default=2, help="timed training steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--contrastive-reps", type=int, default=5, help="reps of the path comparison")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bf16 autocast for the models on CUDA (as the trainer does)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device) -> GACD:
    gen = torch.Generator().manual_seed(args.seed)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def model(arch: str) -> torch.nn.Module:
        return build_model(arch, in_channels=3, num_classes=args.num_classes, mean=mean, std=std)

    torch.manual_seed(args.seed)
    student = model(args.arch).to(device)
    teacher = model(args.teacher_arch or args.arch).to(device)
    labels = torch.randint(0, args.num_classes, (args.n_data,), generator=gen).to(device)
    ctx = MethodContext(
        student=student,
        teacher=teacher,
        attack=AttackSpec(eps=8 / 255, step_size=2 / 255, steps=args.attack_steps),
        attack_train_mode=False,
        num_classes=args.num_classes,
        train_labels=labels,
        generator=gen,
    )
    options = {
        "name": "gacd",
        "negatives": args.negatives,
        "embed_dim": args.embed_dim,
        "positive_attack": args.positive_attack,
    }
    method = build_method(method_options(options), ctx).to(device)
    assert isinstance(method, GACD)
    return method.train()


def synthetic_batch(args: argparse.Namespace, device: torch.device, step: int) -> Batch:
    g = torch.Generator().manual_seed(10_000 + step)
    s = args.image_size
    images = torch.rand(args.batch_size, 3, s, s, generator=g)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=g)
    indices = torch.randperm(args.n_data, generator=g)[: args.batch_size]
    return Batch(images.to(device), labels.to(device), indices.to(device))


class Clock:
    """Wall-clock timer that waits for the device at every reading."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def timed_step(
    method: GACD,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    clock: Clock,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> dict[str, float]:
    """One GACD step (default student anchor), with a clock reading between its parts."""
    o = method.options
    y = batch.labels
    t0 = clock()
    x_pos = method.positives(batch)  # (a)
    t1 = clock()
    with autocast():  # (b) forwards
        with torch.no_grad():
            t_feat, t_logits = method.teacher.forward_features(x_pos)
        t_emb = method.teacher_head(t_feat).detach()
        s_feat, _ = method.student.forward_features(x_pos)
        s_emb = method.student_head(s_feat)
    t2 = clock()
    # (c) contrastive forward and its share of the backward: down to the student embedding.
    anchor = s_emb.detach().requires_grad_(True)
    weight = teacher_confidence(t_logits, y) if o.reweight else None
    negatives = method.sampler.sample(y, method.k, generator=method._sample_gen)
    loss = method._nce(anchor, t_emb, method.teacher_bank, method.z_student, negatives, weight)
    (grad,) = torch.autograd.grad(loss, anchor)
    t3 = clock()
    optimizer.zero_grad(set_to_none=True)  # (b) backward through heads and student, step
    s_emb.backward(grad)
    optimizer.step()
    t4 = clock()
    method.teacher_bank.update(batch.indices, t_emb)  # (c) bank update
    t5 = clock()
    return {
        "attack": t1 - t0,
        "models": (t2 - t1) + (t4 - t3),
        "contrastive": (t3 - t2) + (t5 - t4),
        "total": t5 - t0,
    }


def contrastive_paths(
    method: GACD, args: argparse.Namespace, device: torch.device, clock: Clock
) -> dict[str, dict[str, float]]:
    """Sampling + scoring + loss + backward to the anchor + bank update, both paths."""
    o = method.options
    g = torch.Generator().manual_seed(args.seed + 1)
    b, d = args.batch_size, args.embed_dim
    unit = torch.nn.functional.normalize
    anchor0 = unit(torch.randn(b, d, generator=g), dim=1).to(device)
    positive = unit(torch.randn(b, d, generator=g), dim=1).to(device)
    labels = torch.randint(0, args.num_classes, (b,), generator=g).to(device)
    indices = torch.randperm(args.n_data, generator=g)[:b].to(device)
    weight = torch.rand(b, generator=g).to(device)
    bank, z = method.teacher_bank, method.z_student

    def scoring() -> None:
        a = anchor0.clone().requires_grad_(True)
        neg = method.sampler.sample(labels, method.k, generator=method._sample_gen)
        loss = method._nce(a, positive, bank, z, neg, weight)
        torch.autograd.grad(loss, a)
        bank.update(indices, positive)

    def gather() -> None:
        a = anchor0.clone().requires_grad_(True)
        neg = method.sampler.sample(labels, method.k, generator=method._sample_gen)
        loss = nce_loss(a, positive, bank.rows(neg), weight, o.temperature, method.n_data, z.log_z)
        torch.autograd.grad(loss, a)
        bank.update(indices, positive)

    out: dict[str, dict[str, float]] = {}
    for name, fn in (("scoring", scoring), ("gather", gather)):
        fn()  # warm-up
        peak = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        times = []
        for _ in range(args.contrastive_reps):
            t0 = clock()
            fn()
            times.append(clock() - t0)
        out[name] = {"ms": 1e3 * statistics.median(times), "peak_mib": peak or float("nan")}
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    method = build(args, device)
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.05, momentum=0.9)
    clock = Clock(device)
    use_amp = args.amp and device.type == "cuda"

    def autocast() -> contextlib.AbstractContextManager:
        if use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    print(
        f"device={device} student={args.arch} teacher={args.teacher_arch or args.arch} "
        f"batch={args.batch_size} k={method.k} (asked {args.negatives}) M={args.n_data} "
        f"d={args.embed_dim} image={args.image_size} attack={args.positive_attack} "
        f"x{args.attack_steps} amp={use_amp} threads={torch.get_num_threads()}"
    )
    parts: dict[str, list[float]] = {"attack": [], "models": [], "contrastive": [], "total": []}
    for step in range(args.warmup + args.steps):
        timing = timed_step(method, optimizer, synthetic_batch(args, device, step), clock, autocast)
        if step >= args.warmup:
            for key, value in timing.items():
                parts[key].append(value)
    med = {key: statistics.median(values) for key, values in parts.items()}
    print(f"GACD training step (median of {args.steps}):")
    for key, label in (
        ("attack", "(a) attack (positives)"),
        ("models", "(b) models fwd + bwd + optimiser"),
        ("contrastive", "(c) contrastive (sample, score, NCE fwd+bwd, bank update)"),
    ):
        share = 100 * med[key] / med["total"]
        print(f"  {label:<60s} {1e3 * med[key]:9.2f} ms  {share:5.1f}%")
    print(f"  {'total':<60s} {1e3 * med['total']:9.2f} ms")
    share = 100 * med["contrastive"] / med["total"]
    print(f"contrastive share of the step at k={method.k}: {share:.1f}%")

    paths = contrastive_paths(method, args, device, clock)
    print(f"contrastive part alone (median of {args.contrastive_reps}):")
    for name, label in (
        ("scoring", "scoring path (anchor @ bank.T, gather)"),
        ("gather", "gather path (nce_loss on bank.rows [B,k,d])"),
    ):
        r = paths[name]
        mem = f"  peak {r['peak_mib']:.1f} MiB" if device.type == "cuda" else ""
        print(f"  {label:<48s} {r['ms']:9.2f} ms{mem}")
    speedup = paths["gather"]["ms"] / paths["scoring"]["ms"]
    print(f"speedup of scoring path vs gather path: {speedup:.1f}x")


if __name__ == "__main__":
    main()
