"""Evaluate a model under a list of attacks and write the result as JSON and Markdown."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gacd.data import DeviceSplit
from gacd.engine.distributed import is_main
from gacd.evaluation.robust import parse_attack, robust_accuracy
from gacd.progress import duration, interactive, say


def evaluate_model(
    model: nn.Module,
    split: DeviceSplit,
    attacks: list[str],
    *,
    eps: float,
    step_size: float,
    restarts: int = 1,
    batch_size: int = 512,
    seed: int = 0,
    max_samples: int | None = None,
    progress: bool = False,
    across_ranks: bool = False,
) -> dict[str, Any]:
    """Accuracy (%) under each named attack, with every attack's settings spelled out.
    `across_ranks=True` (all data-parallel ranks call it) splits each attack's batches over
    the ranks, with the same numbers as one process (see `robust_accuracy`)."""
    parsed = [parse_attack(a, eps, step_size, restarts) for a in attacks]  # fail before work
    if any(a.kind == "autoattack" for a in parsed):
        from gacd.evaluation.autoattack import require_autoattack

        require_autoattack()
    n = len(split) if max_samples is None else min(len(split), max_samples)
    results: dict[str, Any] = {"samples": n, "eps": eps, "accuracy": {}, "attacks": {}}
    for attack in parsed:
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        results["accuracy"][attack.name] = acc = robust_accuracy(
            model,
            split,
            attack,
            batch_size=batch_size,
            generator=generator,
            max_samples=max_samples,
            progress=progress,
            across_ranks=across_ranks,
        )
        results["attacks"][attack.name] = attack.describe()
        if progress and not interactive():  # a log gets one line per attack
            say(
                f"{attack.name}: {acc:.2f}% ({n} points, {duration(time.perf_counter() - started)})"
            )
    return results


# AutoAttack this far below PGD (percentage points) suggests PGD was fooled by gradient masking.
MASKING_GAP = 5.0


def masking_warnings(accuracy: dict[str, float]) -> list[str]:
    if "autoattack" not in accuracy:
        return []
    aa = accuracy["autoattack"]
    out = []
    for name, acc in accuracy.items():
        if name.startswith(("pgd", "cw")) and acc - aa > MASKING_GAP:
            out.append(
                f"AutoAttack accuracy {aa:.2f}% is {acc - aa:.2f} points below {name} "
                f"({acc:.2f}%): {name} overestimates robustness; trust the AutoAttack number. "
                "If AutoAttack's gradient-free Square attack is what closes the gap, suspect "
                "gradient masking; if APGD does, the fixed-step PGD was just weaker"
            )
    return out


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def evaluation_markdown(title: str, result: dict[str, Any]) -> str:
    rows = [[name, acc, result["attacks"][name]] for name, acc in result["accuracy"].items()]
    return (
        f"# {title}\n\n{result['samples']} samples.\n\n"
        + markdown_table(["attack", "accuracy (%)", "settings"], rows)
        + "\n"
    )


def write_results(out_dir: str | Path, stem: str, payload: dict[str, Any], markdown: str) -> None:
    """`stem`.json and `stem`.md in `out_dir`; under torchrun only rank 0 writes."""
    if not is_main():
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
