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

import torch

from gacd.config import load_run_config
from gacd.engine.export import load_model
from gacd.errors import ConfigError
from gacd.evaluation.plots import grouped_bars
from gacd.evaluation.report import evaluate_model, markdown_table
from gacd.progress import remaining, say
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
                # The teacher feeds every student: our common PGD-10 protocol (uniform start,
                # last iterate), not the robustness library's PGD-AT defaults.
                "attack.steps=10",
                "attack.random_start=true",
                "attack.keep_best=false",
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
            # ARD's KL is averaged over batch x classes as in its authors' code: a 1/C scale
            # that a C-fold learning rate undoes (2.0: tuned on the validation split).
            [*student, *teacher, "method.name=ard", "optim.epochs=30", "optim.lr=2.0"],
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


def demo_attacks(full: bool) -> list[str]:
    """PGD-20 is the paper's metric; APGD-CE (AutoAttack's first attack, from its reference
    code) is the strong check; --full adds the whole AutoAttack ensemble."""
    return ["natural", "pgd20", "apgd-ce", *(["autoattack"] if full else [])]


def run_demo(
    out: Path,
    *,
    full: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    epochs_scale: float = 1.0,
    threads: int = 1,
) -> dict[str, Any]:
    """Run (or resume) every stage, evaluate, and write OUT/results.json, results.md and
    results.png.

    `full` runs three seeds and adds full AutoAttack; `epochs_scale` shrinks every stage (a
    quick look, or tests); `threads` is torch's intra-op thread count (the digits models are
    so small that one thread is fastest, and it does not collapse beside a busy core)."""
    if epochs_scale <= 0:
        raise ConfigError(f"--epochs-scale: must be positive, got {epochs_scale}")
    if threads < 1:
        raise ConfigError(f"--threads: must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    started = time.perf_counter()
    seeds = [seed, seed + 1, seed + 2] if full else [seed]
    attacks = demo_attacks(full)
    torch_device = resolve_device(device)
    rows: list[dict[str, Any]] = []
    plan = [(s, stage) for s in seeds for stage in demo_stages(s)]
    total_epochs = sum(_epochs(stage, epochs_scale) for _, stage in plan)
    done_epochs = 0
    for k, (s, stage) in enumerate(plan, 1):
        run_dir = out / f"seed{s}" if full else out
        paths = {st.name: run_dir / st.name for st in demo_stages(s)}
        stage_dir = paths[stage.name]
        config = load_run_config(
            None,
            [
                *_fill(stage.overrides, paths, epochs_scale),
                f"out={stage_dir}",
                f"device={device}",
                f"progress={str(progress).lower()}",
            ],
        )
        left = remaining(done_epochs, total_epochs, time.perf_counter() - started)
        say(
            f"[demo] stage {k}/{len(plan)}: {stage.label} (seed {s}, {config.method['name']}, "
            f"{config.optim.epochs} epochs){'; ' + left if left else ''}"
        )
        t0 = time.perf_counter()
        data = prepare_data(config, torch_device)  # read once, for training and evaluation
        result = train(config, resume=True, data=data)
        done_epochs += config.optim.epochs
        if stage.role == "distillation":
            continue
        model = load_model(result.model_best, torch_device)
        eps, step = data.defaults.eps, data.defaults.step_size
        acc = evaluate_model(
            model, data.test, attacks, eps=eps, step_size=step, seed=s, progress=progress
        )["accuracy"]
        rows.append(
            {
                "name": stage.name,
                "label": stage.label,
                "role": stage.role,
                "seed": s,
                "method": stage.method or config.method["name"],
                "architecture": model.spec["arch"],
                "epochs": _trained_epochs(paths, stage, epochs_scale),
                **{ATTACK_KEYS[a]: acc[a] for a in attacks},
                "checkpoint": str(result.model_best),
                "seconds": time.perf_counter() - t0,
            }
        )
        shown = ", ".join(f"{ATTACK_LABELS[a]} {acc[a]:.2f}%" for a in attacks)
        say(f"[demo] {stage.label} (seed {s}): {shown}")
    results = _summarise(rows, attacks, eps, step, time.perf_counter() - started)
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


def _epochs(stage: Stage, epochs_scale: float) -> int:
    text = next(o for o in stage.overrides if o.startswith("optim.epochs="))
    return max(1, round(int(text.split("=")[1]) * epochs_scale))


def _trained_epochs(paths: dict[str, Path], stage: Stage, epochs_scale: float) -> str:
    """'30', or '30 + 10' for a student built on a distillation stage."""
    upstream = [
        _epochs(st, epochs_scale)
        for st in demo_stages(0)
        if st.role == "distillation" and any(f"{{{st.name}}}" in o for o in stage.overrides)
    ]
    return " + ".join(str(e) for e in [*upstream, _epochs(stage, epochs_scale)])


def _summarise(
    rows: list[dict[str, Any]], attacks: list[str], eps: float, step: float, seconds: float
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
        "attacks": [ATTACK_KEYS[a] for a in attacks if a != "natural"],
        "models": [r for r in rows if r["role"] == "reference"],
        "students": [r for r in rows if r["role"] == "student"],
        "summary": summarise_seeds(rows, [ATTACK_KEYS[a] for a in attacks]),
        "wall_seconds": seconds,
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
            values = [r[key] for r in group]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
            entry[key] = mean
            entry[f"{key}_std"] = var**0.5
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
