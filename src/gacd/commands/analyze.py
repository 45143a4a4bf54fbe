"""`gacd analyze`: teacher-student logit-correlation differences and t-SNE of features
(paper Figures 3-5) for a teacher and several models -> PNGs + analysis.json."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gacd.attacks import AttackSpec
from gacd.commands.analysis_inputs import (
    TEACHER,
    AnalysisInputs,
    AnalysisOptions,
    load_inputs,
    parse_model_args,
    parse_pair,
)
from gacd.commands.common import add_overrides, config_from_flags
from gacd.config import RunConfig
from gacd.data import DeviceSplit
from gacd.evaluation.analysis import (
    POINT_KINDS,
    correlation_analysis,
    sample_class_images,
    tsne_analysis,
)
from gacd.evaluation.plots import correlation_heatmaps, tsne_grid


def _clean(value: Any) -> Any:
    """JSON-ready: arrays to lists, non-finite floats to null (strict JSON has no NaN)."""
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def run_analysis(
    config: RunConfig,
    *,
    teacher: str,
    models: Sequence[tuple[str, str]],
    dataset_given: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Correlation differences (teacher vs each model) and a t-SNE panel per model (teacher
    first), on the data, split, budget, seed and device `config` sets (its dataset only if
    `dataset_given`, else the one the models record), with `options` as AnalysisOptions
    takes them; writes correlation_<model>.png, tsne.png and analysis.json under
    `config.out` and returns the JSON payload."""
    opts = AnalysisOptions(**options)
    inputs = load_inputs(config, teacher, models, dataset_given, opts)
    split = inputs.data.split(config.eval.split)
    correlation, n_corr = _correlations(inputs, split, config, opts)
    images_a, images_b = sample_class_images(split, inputs.pair, opts.samples, config.seed)
    embeddings = tsne_analysis(
        inputs.models,
        images_a,
        images_b,
        inputs.pair,
        inputs.attack,
        attacker=None if opts.tsne_attacker == "self" else inputs.models[opts.tsne_attacker],
        targeted=opts.tsne_targeted,
        only_fooled=opts.tsne_only_fooled,
        batch_size=config.data.eval_batch_size,
        seed=config.seed,
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(out, inputs, config.data.name, correlation, embeddings, opts)
    payload = _clean(
        {
            "dataset": config.data.name,
            "classes": inputs.meta.get("classes"),
            "resize": inputs.meta.get("resize"),
            "split": config.eval.split,
            "class_names": inputs.data.raw.class_names,
            "teacher": teacher,
            "models": {n: p for n, p in inputs.paths.items() if n != TEACHER},
            "attack": {
                "eps": inputs.attack.eps,
                "step_size": inputs.attack.step_size,
                "steps": inputs.attack.steps,
                "describe": inputs.attack.describe(),
            },
            "seed": config.seed,
            "correlation": _correlation_payload(correlation, n_corr, inputs.attack, opts),
            "tsne": _tsne_payload(embeddings, inputs, opts),
            "figures": figures,
        }
    )
    (out / "analysis.json").write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    return payload


def _correlations(
    inputs: AnalysisInputs, split: DeviceSplit, config: RunConfig, opts: AnalysisOptions
) -> tuple[dict[str, Any], int]:
    """Teacher-vs-model logit correlations on the same fixed-seed subset for every model."""
    n_corr = min(opts.corr_samples, len(split))
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(config.seed))
    batch = split.batch_at(order[:n_corr].sort().values)
    correlation = {
        model_name: correlation_analysis(
            inputs.models[TEACHER],
            model,
            batch.images,
            batch.labels,
            inputs.attack,
            attack=opts.corr_attack,  # type: ignore[arg-type]
            batch_size=config.data.eval_batch_size,
            seed=config.seed,
        )
        for model_name, model in inputs.models.items()
        if model_name != TEACHER
    }
    return correlation, n_corr


def _tsne_how(inputs: AnalysisInputs, opts: AnalysisOptions) -> str:
    names = inputs.data.raw.class_names
    crafted_by = (
        "each model attacking itself" if opts.tsne_attacker == "self" else opts.tsne_attacker
    )
    direction = f"PGD toward {names[inputs.pair[0]]}" if opts.tsne_targeted else "untargeted PGD"
    return f"{direction}, crafted by {crafted_by}"


def _figures(
    out: Path,
    inputs: AnalysisInputs,
    name: str,
    correlation: dict[str, Any],
    embeddings: dict[str, Any],
    opts: AnalysisOptions,
) -> dict[str, str]:
    raw = inputs.data.raw
    # One colour scale for every student's heatmaps, so the figures compare at a glance.
    vmax = max(
        (float(r.difference.max()) for pair in correlation.values() for r in pair.values()),
        default=1.0,
    )
    figures = {
        f"correlation_{model_name}": str(
            correlation_heatmaps(
                pair["natural"].difference,
                pair["adversarial"].difference,
                out / f"correlation_{model_name}.png",
                class_names=raw.class_names,
                title=f"{model_name} vs teacher: logit-correlation difference ({name})",
                vmax=vmax,
            )
        )
        for model_name, pair in correlation.items()
    }
    a, b = (raw.class_names[k] for k in inputs.pair)
    subtitles = {
        n: f"adv {b} kept as {b}: {e.summary['adv_pred_b_percent']:.0f}%"
        for n, e in embeddings.items()
    }
    figures["tsne"] = str(
        tsne_grid(
            {n: (e.coords, e.kinds) for n, e in embeddings.items()},
            out / "tsne.png",
            class_names=(a, b),
            subtitles=subtitles,
            title=f"t-SNE of penultimate features ({name}); adversarial {b}: "
            f"{_tsne_how(inputs, opts)}\n{inputs.attack.describe()}",
        )
    )
    return figures


def _correlation_payload(
    correlation: dict[str, Any], n_corr: int, attack: AttackSpec, opts: AnalysisOptions
) -> dict[str, Any]:
    return {
        "attacked_model": opts.corr_attack,
        "attack": f"untargeted PGD on cross-entropy against the {opts.corr_attack}: "
        + attack.describe(),
        "samples": n_corr,
        "models": {
            n: {
                kind: {
                    "summary": r.summary(),
                    "corr_teacher": r.teacher,
                    "corr_student": r.student,
                    "difference": r.difference,
                }
                for kind, r in pair.items()
            }
            for n, pair in correlation.items()
        },
    }


def _tsne_payload(
    embeddings: dict[str, Any], inputs: AnalysisInputs, opts: AnalysisOptions
) -> dict[str, Any]:
    a, b = inputs.pair
    names = inputs.data.raw.class_names
    return {
        "classes": [a, b],
        "class_names": [names[a], names[b]],
        "attacker": opts.tsne_attacker,
        "targeted": opts.tsne_targeted,
        "only_fooled": opts.tsne_only_fooled,
        "attack": f"{_tsne_how(inputs, opts)} (on natural {names[b]} images): "
        f"{inputs.attack.describe()}",
        "point_kinds": list(POINT_KINDS),
        "models": {
            n: {"summary": e.summary, "coords": e.coords, "kinds": e.kinds}
            for n, e in embeddings.items()
        },
    }


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def summary_lines(payload: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: the numbers behind each figure."""
    corr = payload["correlation"]
    lines = [
        "logit-correlation difference vs teacher, mean |diff| off-diagonal "
        f"({corr['samples']} {payload['split']} samples, PGD on the {corr['attacked_model']}):"
    ]
    for n, pair in corr["models"].items():
        nat, adv = pair["natural"]["summary"], pair["adversarial"]["summary"]
        lines.append(
            f"  {n:>14}: natural {nat['mean_abs_diff_offdiag']:.4f}   "
            f"adversarial {adv['mean_abs_diff_offdiag']:.4f}"
        )
    a, b = payload["tsne"]["class_names"]
    lines.append(f"t-SNE of features: natural {a}, natural {b}, adversarial {b}:")
    for n, e in payload["tsne"]["models"].items():
        s = e["summary"]
        lines.append(
            f"  {n:>14}: adv {b} still {b} {_fmt(s['adv_pred_b_percent'], '.1f')}%, "
            f"nearer {b}'s centroid {_fmt(s['adv_frac_nearer_b'], '.2f')}, "
            f"class separation {_fmt(s['separation_ratio'], '.2f')}"
        )
    return lines


FLAG_KEYS = {
    "dataset": "data.name",
    "data_root": "data.root",
    "split": "eval.split",
    "eps": "eval.eps",
    "step_size": "eval.step_size",
    "batch_size": "data.eval_batch_size",
    "seed": "seed",
    "device": "device",
    "out": "out",
}


def run(args: argparse.Namespace) -> int:
    config, given = config_from_flags(args, FLAG_KEYS)
    payload = run_analysis(
        config,
        teacher=args.teacher,
        models=parse_model_args(args.models),
        dataset_given="data.name" in given,
        classes_pair=parse_pair(args.classes_pair) if args.classes_pair else None,
        samples=args.samples,
        corr_samples=args.corr_samples,
        steps=args.steps,
        corr_attack=args.corr_attack,
        tsne_attacker=args.tsne_attacker,
        tsne_targeted=not args.tsne_untargeted,
        tsne_only_fooled=args.tsne_only_fooled,
    )
    print("\n".join(summary_lines(payload)))
    figures = ", ".join(Path(f).name for f in payload["figures"].values())
    print(f"wrote {figures} and analysis.json to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="logit-correlation and t-SNE analysis (paper Figs 3-5)")
    p.add_argument("--teacher", required=True, help="exported teacher model")
    p.add_argument(
        "--models", nargs="+", required=True, metavar="NAME=PATH", help="models to compare"
    )
    p.add_argument("--dataset", help="dataset name (default: the one the models record)")
    p.add_argument("--data-root", help="directory holding the dataset files")
    p.add_argument("--classes-pair", help="t-SNE classes a,b (default 2,9: bird,truck)")
    p.add_argument("--samples", type=int, default=100, help="t-SNE images per class")
    p.add_argument("--corr-samples", type=int, default=1000, help="images for correlations")
    p.add_argument("--eps", type=float, help="L-inf budget (default: the dataset's)")
    p.add_argument("--step-size", type=float, help="PGD step (default: the dataset's)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    p.add_argument(
        "--corr-attack",
        default="student",
        choices=["student", "teacher"],
        help="model the correlation's adversarial inputs are crafted on (default: student)",
    )
    p.add_argument(
        "--tsne-attacker",
        default="self",
        help="'self' (each model attacks itself) or a model name crafting for all panels",
    )
    p.add_argument(
        "--tsne-untargeted", action="store_true", help="untargeted PGD, not toward class a"
    )
    p.add_argument(
        "--tsne-only-fooled", action="store_true", help="keep adversarial b classified as a"
    )
    p.add_argument("--split", choices=["test", "val", "train"], help="default: test")
    p.add_argument("--batch-size", type=int, help="attack batch (default 512)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", required=True, help="output directory")
    add_overrides(p, "data.root=/data/cifar10 eval.eps=0.0314")
    p.set_defaults(func=run)
