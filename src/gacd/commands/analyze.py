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
    check_models,
    common_dataset,
    parse_model_args,
    parse_pair,
)
from gacd.commands.common import add_overrides, config_from_flags
from gacd.config import RunConfig
from gacd.engine.export import load_model
from gacd.errors import ConfigError
from gacd.evaluation.analysis import (
    POINT_KINDS,
    correlation_analysis,
    sample_class_images,
    tsne_analysis,
)
from gacd.evaluation.plots import correlation_heatmaps, tsne_grid
from gacd.training import check_model_fits, eval_budget, prepare_data, resolve_device

# Bird and truck on CIFAR-10, the paper's pair; on other 10-class sets simply classes 2, 9.
DEFAULT_PAIR = (2, 9)


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
    classes_pair: tuple[int, int] | None = None,
    samples: int = 100,
    corr_samples: int = 1000,
    steps: int = 20,
    corr_attack: str = "student",
    tsne_attacker: str = "self",
    tsne_targeted: bool = True,
    tsne_only_fooled: bool = False,
) -> dict[str, Any]:
    """Correlation differences (teacher vs each model) and a t-SNE panel per model (teacher
    first), on the data, split, budget, seed and device `config` sets (its dataset only if
    `dataset_given`, else the one the models record); writes correlation_<model>.png,
    tsne.png and analysis.json under `config.out` and returns the JSON payload."""
    paths = check_models(teacher, models)
    if corr_attack not in ("student", "teacher"):
        raise ConfigError(f"corr_attack must be 'student' or 'teacher', got '{corr_attack}'")
    if tsne_attacker != "self" and tsne_attacker not in paths:
        raise ConfigError(
            f"t-SNE attacker '{tsne_attacker}' is neither 'self' nor one of: {', '.join(paths)}"
        )
    if samples < 1 or corr_samples < 2:
        raise ConfigError("samples must be >= 1 and correlation samples >= 2")
    name, meta = common_dataset(paths, config.data.name if dataset_given else None)
    config.data.name = name
    config.data.classes = meta.get("classes")
    config.data.resize = meta.get("resize")
    seed, split, batch_size, out = (
        config.seed,
        config.eval.split,
        config.data.eval_batch_size,
        config.out,
    )
    torch_device = resolve_device(config.device)
    # Models first: a wrong class index or architecture fails before a large dataset loads.
    loaded = {n: load_model(p, torch_device) for n, p in paths.items()}
    c = int(loaded[TEACHER].spec["num_classes"])
    a, b = classes_pair if classes_pair is not None else (DEFAULT_PAIR if c >= 10 else (0, 1))
    for k in (a, b):
        if not 0 <= k < c:
            raise ConfigError(
                f"class index {k} is out of range: the models have classes 0..{c - 1}"
            )
    if a == b:
        raise ConfigError(f"--classes-pair needs two different classes, got {a},{b}")

    data = prepare_data(config, torch_device)
    raw = data.raw
    for model_name, model in loaded.items():
        check_model_fits(model, raw, f"{model_name}: {paths[model_name]}")
    eps, step_size = eval_budget(config, data.defaults)
    attack = AttackSpec(eps=eps, step_size=step_size, steps=steps)
    split_data = data.split(split)

    # Correlations: the same fixed-seed subset of the split for every model.
    n_corr = min(corr_samples, len(split_data))
    order = torch.randperm(len(split_data), generator=torch.Generator().manual_seed(seed))
    batch = split_data.batch_at(order[:n_corr].sort().values)
    correlation = {}
    for model_name, model in loaded.items():
        if model_name == TEACHER:
            continue
        correlation[model_name] = correlation_analysis(
            loaded[TEACHER],
            model,
            batch.images,
            batch.labels,
            attack,
            attack=corr_attack,  # type: ignore[arg-type]
            batch_size=batch_size,
            seed=seed,
        )

    images_a, images_b = sample_class_images(split_data, (a, b), samples, seed)
    embeddings = tsne_analysis(
        loaded,
        images_a,
        images_b,
        (a, b),
        attack,
        attacker=None if tsne_attacker == "self" else loaded[tsne_attacker],
        targeted=tsne_targeted,
        only_fooled=tsne_only_fooled,
        batch_size=batch_size,
        seed=seed,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # One colour scale for every student's heatmaps, so the figures compare at a glance.
    vmax = max(
        (float(r.difference.max()) for pair in correlation.values() for r in pair.values()),
        default=1.0,
    )
    figures = {}
    for model_name, pair in correlation.items():
        figures[f"correlation_{model_name}"] = str(
            correlation_heatmaps(
                pair["natural"].difference,
                pair["adversarial"].difference,
                out / f"correlation_{model_name}.png",
                class_names=raw.class_names,
                title=f"{model_name} vs teacher: logit-correlation difference ({name})",
                vmax=vmax,
            )
        )
    names_ab = (raw.class_names[a], raw.class_names[b])
    crafted_by = "each model attacking itself" if tsne_attacker == "self" else tsne_attacker
    direction = f"PGD toward {names_ab[0]}" if tsne_targeted else "untargeted PGD"
    tsne_how = f"{direction}, crafted by {crafted_by}"
    subtitles = {
        n: f"adv {names_ab[1]} kept as {names_ab[1]}: {e.summary['adv_pred_b_percent']:.0f}%"
        for n, e in embeddings.items()
    }
    figures["tsne"] = str(
        tsne_grid(
            {n: (e.coords, e.kinds) for n, e in embeddings.items()},
            out / "tsne.png",
            class_names=names_ab,
            subtitles=subtitles,
            title=f"t-SNE of penultimate features ({name}); adversarial {names_ab[1]}: "
            f"{tsne_how}\n{attack.describe()}",
        )
    )

    payload = _clean(
        {
            "dataset": name,
            "classes": meta.get("classes"),
            "resize": meta.get("resize"),
            "split": split,
            "class_names": raw.class_names,
            "teacher": teacher,
            "models": {n: p for n, p in paths.items() if n != TEACHER},
            "attack": {
                "eps": attack.eps,
                "step_size": attack.step_size,
                "steps": attack.steps,
                "describe": attack.describe(),
            },
            "seed": seed,
            "correlation": {
                "attacked_model": corr_attack,
                "attack": f"untargeted PGD on cross-entropy against the {corr_attack}: "
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
            },
            "tsne": {
                "classes": [a, b],
                "class_names": list(names_ab),
                "attacker": tsne_attacker,
                "targeted": tsne_targeted,
                "only_fooled": tsne_only_fooled,
                "attack": f"{tsne_how} (on natural {names_ab[1]} images): {attack.describe()}",
                "point_kinds": list(POINT_KINDS),
                "models": {
                    n: {"summary": e.summary, "coords": e.coords, "kinds": e.kinds}
                    for n, e in embeddings.items()
                },
            },
            "figures": figures,
        }
    )
    (out / "analysis.json").write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    return payload


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
