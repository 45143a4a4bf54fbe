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
        ),
        Stage(
            "gacd_aft",
            "student",
            "GACD+AFT",
            [
                *common,
                "method.name=pgd_at",
                "init={gacd_distill}/model_last.pt",
                "optim.epochs=15",
                "optim.lr=0.05",
            ],
        ),
    ]


def _fill(overrides: list[str], paths: dict[str, Path]) -> list[str]:
    return [o.format(**{k: str(v) for k, v in paths.items()}) for o in overrides]


def run_demo(
    out: Path, *, full: bool = False, seed: int = 0, device: str = "auto", progress: bool = True
) -> dict[str, Any]:
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
                    *_fill(stage.overrides, paths),
                    f"out={stage_dir}",
                    f"device={device}",
                    f"progress={str(progress).lower()}",
                ],
            )
            t0 = time.perf_counter()
            result = train(config, resume=True)
            if stage.role == "distillation":
                continue
            data = prepare_data(config, torch_device)
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
                    "method": config.method["name"],
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
        "wall_seconds": seconds,
    }


def results_markdown(results: dict[str, Any]) -> str:
    a = results["attack"]
    lines = [
        "# gacd demo on scikit-learn digits",
        "",
        f"Test split accuracy (%); PGD-20, L-inf eps={a['eps']:.3g}, step {a['step_size']:.3g}, "
        "random start.",
        "",
        markdown_table(
            ["model", "architecture", "seed", "natural", "PGD-20"],
            [
                [r["label"], r["architecture"], r["seed"], r["natural"], r["pgd"]]
                for r in results["models"] + results["students"]
            ],
        ),
        "",
        f"Wall time: {results['wall_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)
