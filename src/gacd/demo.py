"""`gacd demo`: the whole story on scikit-learn's digits in a few CPU minutes.

An undefended model and a PGD-AT robust teacher are trained and evaluated (natural and
PGD-20 accuracy on the test split); students are then distilled from the teacher and
evaluated the same way. Each stage is a normal training run under OUT/, so a re-run skips
finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gacd.config import load_run_config
from gacd.engine.export import load_model
from gacd.evaluation.report import evaluate_model, markdown_table
from gacd.run import prepare_data, resolve_device, train

TEACHER_ARCH = "digits_cnn"
STUDENT_ARCH = "digits_cnn_small"


@dataclass
class Stage:
    """One training run of the demo: a name, a role, a label for the table, and overrides."""

    name: str
    role: str  # "reference" (undefended, teacher), "student", or "distillation" (not scored)
    label: str
    overrides: list[str]
    method: str = ""  # the name in results when it is not the config's method (GACD rows)


def demo_stages(seed: int) -> list[Stage]:
    """The demo's runs in order; "{name}" in an override is the directory of stage `name`."""
    common = [f"seed={seed}", "data.name=digits"]
    teacher = ["teacher={teacher}/model_best.pt"]
    student = [*common, f"model.arch={STUDENT_ARCH}"]
    return [
        Stage(
            "undefended",
            "reference",
            "Undefended (natural training)",
            [
                *common,
                "method.name=natural",
                f"model.arch={TEACHER_ARCH}",
                "optim.epochs=15",
                "optim.lr=0.05",
            ],
        ),
        Stage(
            "teacher",
            "reference",
            "Robust teacher (PGD-AT)",
            [
                *common,
                "method.name=pgd_at",
                f"model.arch={TEACHER_ARCH}",
                "optim.epochs=30",
                "optim.lr=0.1",
            ],
        ),
        Stage(
            "pgd_at_student",
            "student",
            "PGD-AT (student trained directly)",
            [*student, "method.name=pgd_at", "optim.epochs=30", "optim.lr=0.1"],
        ),
        Stage(
            "kd",
            "student",
            "KD",
            [*student, *teacher, "method.name=kd", "optim.epochs=30", "optim.lr=0.1"],
        ),
        Stage(
            "ard",
            "student",
            "ARD",
            [*student, *teacher, "method.name=ard", "optim.epochs=30", "optim.lr=0.1"],
        ),
        Stage(
            "gacd_distill",
            "distillation",
            "GACD feature distillation",
            [*student, *teacher, "method.name=gacd", "optim.epochs=30", "optim.lr=0.1"],
        ),
        Stage(
            "gacd",
            "student",
            "GACD (linear evaluation)",
            [
                *common,
                "method.name=linear",
                "init={gacd_distill}/model_last.pt",
                "optim.epochs=10",
                "optim.lr=0.05",
                "optim.weight_decay=0",
            ],
            method="gacd",
        ),
        Stage(
            "gacd_aft",
            "student",
            "GACD+AFT",
            [
                *common,
                "method.name=pgd_at",
                "init={gacd_distill}/model_last.pt",
                "optim.epochs=30",
                "optim.lr=0.1",
            ],
            method="gacd_aft",
        ),
    ]


def _fill(overrides: list[str], paths: dict[str, Path], epochs_scale: float) -> list[str]:
    """Insert earlier stages' directories and scale the epoch counts."""
    out = []
    for o in overrides:
        if o.startswith("optim.epochs="):
            o = f"optim.epochs={max(1, round(int(o.split('=')[1]) * epochs_scale))}"
        out.append(o.format(**{k: str(v) for k, v in paths.items()}))
    return out


def run_demo(
    out: Path,
    *,
    full: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    epochs_scale: float = 1.0,
) -> dict[str, Any]:
    """Run (or resume) every stage, evaluate, and write OUT/results.json and results.md.

    `full` runs three seeds; `epochs_scale` shrinks every stage (a quick look, or tests)."""
    if epochs_scale <= 0:
        raise ValueError(f"epochs scale must be positive, got {epochs_scale}")
    started = time.perf_counter()
    seeds = [seed, seed + 1, seed + 2] if full else [seed]
    torch_device = resolve_device(device)
    rows: list[dict[str, Any]] = []
    for s in seeds:
        run_dir = out / f"seed{s}" if full else out
        paths: dict[str, Path] = {}
        for stage in demo_stages(s):
            stage_dir = run_dir / stage.name
            paths[stage.name] = stage_dir
            config = load_run_config(
                None,
                [
                    *_fill(stage.overrides, paths, epochs_scale),
                    f"out={stage_dir}",
                    f"device={device}",
                    f"progress={str(progress).lower()}",
                ],
            )
            t0 = time.perf_counter()
            data = prepare_data(config, torch_device)  # read once, for training and evaluation
            result = train(config, resume=True, data=data)
            if stage.role == "distillation":
                continue
            model = load_model(result.model_best, torch_device)
            eps, step = data.defaults.eps, data.defaults.step_size
            acc = evaluate_model(
                model, data.test, ["natural", "pgd20"], eps=eps, step_size=step, seed=s
            )["accuracy"]
            rows.append(
                {
                    "name": stage.name,
                    "label": stage.label,
                    "role": stage.role,
                    "seed": s,
                    "method": stage.method or config.method["name"],
                    "architecture": model.spec["arch"],
                    "natural": acc["natural"],
                    "pgd": acc["pgd20"],
                    "checkpoint": str(result.model_best),
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(
                f"[demo] {stage.label or stage.name} (seed {s}): natural "
                f"{acc['natural']:.2f}%  PGD-20 {acc['pgd20']:.2f}%",
                flush=True,
            )
    results = _summarise(rows, eps, step, time.perf_counter() - started)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    print(results_markdown(results))
    return results


def _summarise(
    rows: list[dict[str, Any]], eps: float, step: float, seconds: float
) -> dict[str, Any]:
    return {
        "dataset": "digits",
        "attack": {
            "name": "pgd20",
            "eps": eps,
            "step_size": step,
            "steps": 20,
            "random_start": True,
            "split": "test",
        },
        "models": [r for r in rows if r["role"] == "reference"],
        "students": [r for r in rows if r["role"] == "student"],
        "summary": summarise_seeds(rows),
        "wall_seconds": seconds,
    }


def summarise_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (sample) standard deviation per model across seeds, in stage order."""
    out = []
    for name in dict.fromkeys(r["name"] for r in rows):
        group = [r for r in rows if r["name"] == name]
        entry = {k: group[0][k] for k in ("name", "label", "role", "method", "architecture")}
        entry["seeds"] = [r["seed"] for r in group]
        for key in ("natural", "pgd"):
            values = [r[key] for r in group]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
            entry[key] = mean
            entry[f"{key}_std"] = var**0.5
        out.append(entry)
    return out


def results_markdown(results: dict[str, Any]) -> str:
    a = results["attack"]
    summary = results["summary"]
    n_seeds = max(len(r["seeds"]) for r in summary)

    def cell(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.2f}" + (f" ± {r[key + '_std']:.2f}" if n_seeds > 1 else "")

    seeds = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else f"seed {summary[0]['seeds'][0]}"
    lines = [
        "# gacd demo on scikit-learn digits",
        "",
        f"Test split accuracy (%), {seeds}; PGD-20, L-inf eps={a['eps']:.3g}, "
        f"step {a['step_size']:.3g}, random start.",
        "",
        markdown_table(
            ["model", "method", "architecture", "natural", "PGD-20"],
            [
                [r["label"], r["method"], r["architecture"], cell(r, "natural"), cell(r, "pgd")]
                for r in summary
            ],
        ),
        "",
        f"Wall time: {results['wall_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)
