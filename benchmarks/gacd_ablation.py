"""GACD ablation on digits, scored on the VALIDATION split (never the test split).

Each variant is a set of overrides of configs/digits/gacd.yaml (the distillation), followed
by a linear probe (configs/digits/linear.yaml) and, where a variant asks, AFT
(configs/digits/aft.yaml). Every stage is an ordinary `gacd.training.train` run, so results are
cached in OUT and a re-run only trains what is missing. Prints one table row per variant:
validation natural and PGD-20 accuracy, mean +- std over the seeds, the last epoch's mean
cross-class cosine of the student embeddings (the collapse detector) and how many epochs the
detector fired.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/gacd_ablation.py \\
        --out /tmp/gacd_ablation --seeds 0 1 2 --variants default bank_random z_ema
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from gacd.config import load_run_config
from gacd.contrastive import COLLAPSE_COSINE, EmbeddingCollapseWarning
from gacd.engine.export import load_model
from gacd.evaluation.robust import parse_attack, robust_accuracy
from gacd.training import prepare_data, train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "digits"

# name -> (distillation overrides, probe overrides, AFT: None | "head" (from the distilled
# model's random head) | "probe" (from the probe's head)).
VARIANTS: dict[str, tuple[list[str], list[str], str | None]] = {
    "default": ([], [], None),
    "paper": (["method.bank_init=random", "method.center_teacher=false"], [], None),
    "bank_random": (["method.bank_init=random"], [], None),
    "z_ema": (["method.z_mode=ema"], [], None),
    "center": (["method.center_teacher=true"], [], None),
    "no_center": (["method.center_teacher=false"], [], None),
    "head_bn": (["method.student_head_bn=true"], [], None),
    "z_fixed": (["method.z_mode=fixed"], [], None),
    "lr0.02": (["optim.lr=0.02"], [], None),
    "warmup3": (["optim.warmup_epochs=3"], [], None),
    "lr0.05": (["optim.lr=0.05"], [], None),
    "lr0.2": (["optim.lr=0.2"], [], None),
    "T0.02": (["method.temperature=0.02"], [], None),
    "T0.05": (["method.temperature=0.05"], [], None),
    "T0.07": (["method.temperature=0.07"], [], None),
    "T0.1": (["method.temperature=0.1"], [], None),
    "T0.2": (["method.temperature=0.2"], [], None),
    "ot_eps0.01": (["method.ot_epsilon=0.01", "method.ot_iterations=100"], [], None),
    "ot_logits": (
        ["method.ot_space=logits", "method.ot_epsilon=0.01", "method.ot_iterations=100"],
        [],
        None,
    ),
    "pos_misalign": (["method.positive_attack=misalign"], [], None),
    "pos_kl": (["method.positive_attack=kl"], [], None),
    "pos_none": (["method.positive_attack=none"], [], None),
    "probe_adv": ([], ["method.adversarial=true"], None),
    "aft_head": ([], [], "head"),
    "aft_probe": ([], [], "probe"),
    "epochs10": (["optim.epochs=10"], [], None),
    "epochs20": (["optim.epochs=20"], [], None),
    "epochs45": (["optim.epochs=45"], [], None),
    "epochs60": (["optim.epochs=60"], [], None),
    "epochs90": (["optim.epochs=90"], [], None),
    "epochs120": (["optim.epochs=120"], [], None),
    "epochs200": (["optim.epochs=200"], [], None),
    "ot_eps0.1": (["method.ot_epsilon=0.1"], [], None),
    "ot_it10": (["method.ot_iterations=10"], [], None),
    "ot_it100": (["method.ot_iterations=100"], [], None),
    "no_twarm": (["method.temperature_warmup=0"], [], None),
}


def _run(config_file: Path, out: Path, overrides: list[str]) -> Path:
    config = load_run_config(
        str(config_file), [f"out={out}", "device=cpu", "progress=false", *overrides]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmbeddingCollapseWarning)
        train(config, resume=True)
    fired = [str(w.message) for w in caught if issubclass(w.category, EmbeddingCollapseWarning)]
    record = out / "collapse_warnings.json"
    if fired or not record.exists():  # a cached run trains nothing and warns nothing
        record.write_text(json.dumps(fired))
    return out


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def variant(name: str) -> tuple[list[str], list[str], str | None]:
    """A variant name is one or more VARIANTS keys joined by '+' (e.g. 'z_ema+center'):
    their overrides in order (later ones win), and the last AFT start any of them asks."""
    distill_o: list[str] = []
    probe_o: list[str] = []
    aft = None
    for part in name.split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"unknown variant part {part!r}; known: {', '.join(VARIANTS)}")
        d, p, a = VARIANTS[part]
        distill_o, probe_o, aft = [*distill_o, *d], [*probe_o, *p], a or aft
    return distill_o, probe_o, aft


def run_variant(name: str, seed: int, teacher: Path, out: Path) -> dict[str, float]:
    distill_o, probe_o, aft = variant(name)
    # Variants that change only the probe or AFT share the distillation they start from.
    key = "+".join(p for p in name.split("+") if VARIANTS[p][0]) or "default"
    probe_key = "+".join(p for p in name.split("+") if VARIANTS[p][1])
    base = [f"seed={seed}", f"teacher={teacher}"]
    root = out / key / f"seed{seed}"
    distill = _run(CONFIGS / "gacd.yaml", root / "distill", [*base, *distill_o])
    probe = _run(
        CONFIGS / "linear.yaml",
        root / ("linear" + (f"_{probe_key}" if probe_key else "")),
        [f"seed={seed}", f"init={distill / 'model_last.pt'}", *probe_o],
    )
    final = probe / "model_best.pt"
    if aft is not None:
        start = distill / "model_last.pt" if aft == "head" else final
        aft_dir = root / (f"aft_{aft}" + (f"_{probe_key}" if probe_key else ""))
        final = _run(CONFIGS / "aft.yaml", aft_dir, [f"seed={seed}", f"init={start}"])
        final = final / "model_best.pt"
    history = _metrics(distill)
    fired = json.loads((distill / "collapse_warnings.json").read_text())
    # The last epoch is not checked by the method (no end-of-epoch hook): count it here.
    fired_last = history[-1].get("train_cross_cos", 0.0) > COLLAPSE_COSINE
    data = prepare_data(load_run_config(None, ["device=cpu"]), torch.device("cpu"))
    model = load_model(str(final)).eval()
    gen = torch.Generator().manual_seed(seed)
    return {
        "val_nat": robust_accuracy(model, data.val, parse_attack("natural", 0, 0)),
        "val_pgd20": robust_accuracy(
            model, data.val, parse_attack("pgd20", 0.2, 0.05), generator=gen
        ),
        "cross_cos_first": history[0].get("train_cross_cos", float("nan")),
        "cross_cos_last": history[-1].get("train_cross_cos", float("nan")),
        "collapse_epochs": float(len(fired) + int(fired_last)),
    }


def _ms(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--teacher", help="exported digits teacher (default: train one into OUT)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--variants", nargs="+", default=["default"], help=f"from {', '.join(VARIANTS)}; '+' joins"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    teacher = Path(args.teacher) if args.teacher else None
    if teacher is None:
        teacher = _run(CONFIGS / "teacher.yaml", out / "teacher", ["seed=0"]) / "model_best.pt"
    rows = []
    for name in args.variants:
        results = [run_variant(name, s, teacher, out) for s in args.seeds]
        (out / f"results_{name}.json").write_text(json.dumps(results, indent=1))
        col = {k: [r[k] for r in results] for k in results[0]}
        rows.append(
            f"| {name} | {_ms(col['val_nat'])} | {_ms(col['val_pgd20'])} | "
            f"{_ms(col['cross_cos_first'])} | {_ms(col['cross_cos_last'])} | "
            f"{int(sum(col['collapse_epochs']))} |"
        )
        print(rows[-1], flush=True)
    print(f"\nvalidation split, seeds {args.seeds}, mean ± std")
    print(
        "| variant | val natural | val PGD-20 | cross-cos ep1 | cross-cos last | collapsed epochs |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
