"""`gacd demo`: the whole story on scikit-learn's digits in a few CPU minutes.

The demo is an experiment of the ordinary pipeline (`demo.yaml` beside this module): an
undefended model and a PGD-AT robust teacher, then students distilled from the teacher, all
evaluated on the test split. Its stages live under OUT/ (a re-run skips finished ones and
resumes an interrupted one); this command then writes the demo's own summary, OUT/results
.json, results.md and results.png, with mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from gacd.evaluation.plots import grouped_bars
from gacd.evaluation.results import markdown_table
from gacd.experiments import (
    ExperimentConfig,
    Plan,
    load_experiment,
    plan_experiment,
    run_experiment,
)
from gacd.experiments.report_format import summarise
from gacd.progress import say

DEMO_EXPERIMENT = Path(__file__).with_name("demo.yaml")


def demo_attacks(full: bool) -> list[str]:
    """PGD-20 is the paper's metric; APGD-CE (AutoAttack's first attack, from its reference
    code) is the strong check; --full adds the whole AutoAttack ensemble."""
    return ["natural", "pgd20", "apgd-ce", *(["autoattack"] if full else [])]


def demo_experiment(
    out: Path,
    *,
    full: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    epochs_scale: float = 1.0,
    threads: int = 1,
    jobs: int = 2,
) -> ExperimentConfig:
    """The demo's experiment with this invocation's settings."""
    seeds = [seed, seed + 1, seed + 2] if full else [seed]
    return load_experiment(
        DEMO_EXPERIMENT,
        [
            f"out={out / 'pipeline'}",
            f"stages_dir={out}",
            f"seeds={seeds}",
            f"attacks=[{', '.join(demo_attacks(full))}]",
            f"threads={threads}",
            f"jobs={jobs}",
            f"epochs_scale={epochs_scale}",
            f"base.device={device}",
            f"base.progress={str(progress).lower()}",
        ],
    )


def run_demo(out: Path, **settings: Any) -> dict[str, Any]:
    """Run (or resume) the demo's experiment, then write OUT/results.json, results.md and
    results.png. `settings` as `demo_experiment` takes them: `full` runs three seeds and
    adds AutoAttack, `epochs_scale` shrinks every stage (a quick look, or tests), `threads`
    is torch's thread count (the digits models are so small that one thread is fastest,
    and it does not collapse beside a busy core)."""
    exp = demo_experiment(out, **settings)
    plan = plan_experiment(exp)
    experiment = run_experiment(exp, log=say)
    results = demo_results(experiment, plan)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    results_plot(results, out / "results.png")
    print(results_markdown(results))
    return results


# Result keys and column labels of the demo's attacks (results.json keeps "pgd" for PGD-20).
ATTACK_KEYS = {
    "natural": "natural",
    "pgd20": "pgd",
    "apgd-ce": "apgd_ce",
    "autoattack": "autoattack",
}
ATTACK_LABELS = {
    "natural": "natural",
    "pgd20": "PGD-20",
    "apgd-ce": "APGD-CE",
    "autoattack": "AutoAttack",
}


def _trained_epochs(plan: Plan, key: str) -> str:
    """'30', or '30 + 10' for a student built on a distillation stage."""
    chain, stage = [], plan.stages[key]
    while True:
        chain.insert(0, stage.config.optim.epochs)
        upstream = [plan.stages[d] for d in stage.depends if plan.stages[d].kind != "teacher"]
        if not upstream:
            return " + ".join(str(e) for e in chain)
        stage = upstream[0]


def demo_rows(experiment: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """One row per evaluated model and seed (each run's best epoch), in stage order."""
    rows = []
    for r in experiment["records"]:
        if r["selection"] != "best":
            continue
        teacher = r["kind"] == "teacher"
        name = r["teacher"] if teacher else r["method"]
        label = experiment["teachers"][name]["label"] if teacher else experiment["methods"][name]
        rows.append(
            {
                "name": name,
                "label": label,
                "role": "reference" if teacher else "student",
                "seed": r["seed"],
                "method": r["method"],
                "architecture": r["arch"],
                "epochs": _trained_epochs(plan, r["stage"]),
                **{ATTACK_KEYS[a]: acc for a, acc in r["accuracy"].items()},
                "checkpoint": r["checkpoint"],
                "seconds": r["seconds"],
            }
        )
    return rows


def demo_results(experiment: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The demo's summary (results.json) from the experiment's results."""
    rows = demo_rows(experiment, plan)
    data = experiment["data"]
    attacks = next(iter(experiment["records"]))["accuracy"]
    return {
        "dataset": data["name"],
        "attack": {
            "name": "pgd20",
            "eps": data["eps"],
            "step_size": data["step_size"],
            "steps": 20,
            "random_start": True,
            "split": data["split"],
        },
        "attacks": [ATTACK_KEYS[a] for a in attacks if a != "natural"],
        "models": [r for r in rows if r["role"] == "reference"],
        "students": [r for r in rows if r["role"] == "student"],
        "summary": summarise_seeds(rows, [ATTACK_KEYS[a] for a in attacks]),
        "wall_seconds": experiment["wall_seconds"],
    }


def summarise_seeds(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Mean and (sample) standard deviation per model across seeds, in stage order."""
    out = []
    for name in dict.fromkeys(r["name"] for r in rows):
        group = [r for r in rows if r["name"] == name]
        entry = {
            k: group[0][k] for k in ("name", "label", "role", "method", "architecture", "epochs")
        }
        entry["seeds"] = [r["seed"] for r in group]
        for key in keys:
            mean, std = summarise([r[key] for r in group])
            entry[key] = mean
            entry[f"{key}_std"] = 0.0 if math.isnan(std) else std  # one seed: no spread
        out.append(entry)
    return out


def _columns(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(result key, column label) of every accuracy column, natural first."""
    by_key = {ATTACK_KEYS[a]: ATTACK_LABELS[a] for a in ATTACK_KEYS}
    return [("natural", "natural"), *((k, by_key[k]) for k in results["attacks"])]


def results_markdown(results: dict[str, Any]) -> str:
    a = results["attack"]
    summary = results["summary"]
    n_seeds = max(len(r["seeds"]) for r in summary)
    columns = _columns(results)

    def cell(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.2f}" + (f" ± {r[key + '_std']:.2f}" if n_seeds > 1 else "")

    seeds = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else f"seed {summary[0]['seeds'][0]}"
    lines = [
        "# gacd demo on scikit-learn digits",
        "",
        f"Test split accuracy (%), {seeds}; L-inf eps={a['eps']:.3g}. PGD-20 (the paper's "
        f"metric): step {a['step_size']:.3g}, random start. APGD-CE (and AutoAttack): the "
        "reference AutoAttack code with its standard settings, the stronger check.",
        "",
        markdown_table(
            ["model", "method", "architecture", "epochs", *(label for _, label in columns)],
            [
                [r["label"], r["method"], r["architecture"], r["epochs"]]
                + [cell(r, key) for key, _ in columns]
                for r in summary
            ],
        ),
        "",
        f"Wall time: {results['wall_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def results_plot(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: natural and robust accuracy of every model (mean ± std over seeds)."""
    summary = results["summary"]
    series = {
        label: (
            [r[key] for r in summary],
            [r[f"{key}_std"] if len(r["seeds"]) > 1 else float("nan") for r in summary],
        )
        for key, label in _columns(results)
    }
    return grouped_bars(
        [r["label"] for r in summary],
        series,
        path,
        title=f"gacd demo on digits (test split, eps {results['attack']['eps']:.2g})",
    )


def run(args: argparse.Namespace) -> int:
    run_demo(
        Path(args.out),
        full=args.full,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        epochs_scale=args.epochs_scale,
        threads=args.threads,
        jobs=args.jobs,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="robust teacher, undefended model and students on digits")
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument(
        "--full", action="store_true", help="three seeds and full AutoAttack (much slower)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: fastest for the tiny digits models)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="stages trained at once, each in its own process (default 2)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        help="multiply every stage's epochs (e.g. 0.2 for a quick look)",
    )
    p.set_defaults(func=run)
