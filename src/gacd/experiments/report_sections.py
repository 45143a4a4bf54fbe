"""The report's sections beyond the main tables: a sweep (one table per teacher -> student
group with a value per row, and a line plot of accuracy against the swept parameter) and
robustness transfer (linear probes on other tasks)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from gacd.evaluation.results import markdown_table
from gacd.experiments.paper import PAPER, PaperTable
from gacd.experiments.report_format import (
    arch_label,
    attack_label,
    attacks_of,
    dataset_label,
    describe_data,
    fmt,
    records_of,
    seed_note,
    summarise,
    teacher_title,
    values_of,
)

PLOTS = "plots"


def paper_table(results: dict[str, Any]) -> PaperTable | None:
    """The paper's reported numbers for this experiment, if it names a paper table."""
    return PAPER.get(results.get("paper") or "")


def sweep_section(results: dict[str, Any], run_dir: Path) -> list[str]:
    sweep = results.get("sweep")
    if sweep is None:
        return []
    param = sweep["param"]
    axis = {"method": "method", "arch": "arch", "seed": "seed"}.get(param)
    records = [
        r
        for r in records_of(results, "student", "best")
        if r["sweep_value"] is not None or axis is not None
    ]
    if not records:
        return []
    attacks = attacks_of(records)
    label = sweep.get("label") or param
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        key = tuple(r[k] for k in ("teacher", "arch", "method") if k != axis)
        groups[key].append(r)
    lines = [f"## Sweep over {label}", ""]
    values = sweep["values"]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    for key, recs in groups.items():
        parts = dict(zip([k for k in ("teacher", "arch", "method") if k != axis], key, strict=True))
        name = f"Teacher {teacher_title(results, parts.get('teacher'))}"
        if "arch" in parts:
            name += f" → {arch_label(parts['arch'])}"
        if "method" in parts:
            name += f", {results['methods'].get(parts['method'], parts['method'])}"
        rows, series = [], {attack_label(a): ([], []) for a in attacks}
        for value in values:
            cell = [r for r in recs if r["sweep_value"] == value]
            rows.append([value, *[fmt(values_of(cell, a)) for a in attacks]])
            for a in attacks:
                vals = values_of(cell, a)
                mean, std = summarise(vals) if vals else (math.nan, math.nan)
                series[attack_label(a)][0].append(mean)
                series[attack_label(a)][1].append(std)
        lines += [
            f"### {name}",
            "",
            markdown_table([label] + [attack_label(a) for a in attacks], rows),
            "",
            f"{seed_note(recs)}; best-on-validation models.",
            "",
        ]
        if numeric and len(values) > 1:
            lines += _sweep_plot(run_dir, param, label, key, values, series, sweep.get("log_x"))
    paper = paper_table(results)
    if paper is not None and paper.kind == "figure":
        lines += [f"Paper (reported): *{paper.caption}*", "", *[f"> {n}" for n in paper.notes], ""]
    return lines


def _sweep_plot(
    run_dir: Path,
    param: str,
    label: str,
    key: tuple[Any, ...],
    values: list[Any],
    series: dict[str, tuple[list[float], list[float]]],
    log_x: bool | None,
) -> list[str]:
    try:
        from gacd.evaluation.plots import line_plot_with_spread
    except ImportError:  # the plotting module is optional for a report
        return ["(plot skipped: gacd.evaluation.plots is not available)", ""]
    positive = all(v > 0 for v in values)
    if log_x is None:
        log_x = positive and max(values) / min(values) >= 100
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join(str(k) for k in (param, *key)))
    path = run_dir / PLOTS / f"sweep_{slug}.png"
    line_plot_with_spread(
        [float(v) for v in values],
        series,
        xlabel=label,
        ylabel="accuracy (%)",
        path=path,
        log_x=bool(log_x and positive),
    )
    rel = path.relative_to(run_dir).as_posix()
    return [f"![{label} sweep]({rel})", ""]


def transfer_section(results: dict[str, Any]) -> list[str]:
    transfer = results.get("transfer")
    records = records_of(results, "transfer", "last")  # the probe's last epoch
    if not transfer or not records:
        return []
    targets = [t for t in transfer["targets"] if any(r["target"] == t for r in records)]
    attacks = attacks_of(records)
    headers = ["Source model"] + [
        f"{transfer['targets'][t].get('label') or t} {attack_label(a)}"
        for t in targets
        for a in attacks
    ]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        source_kind = "teacher" if r["source"].startswith("teachers/") else "student"
        groups[(source_kind, r["teacher"], r["arch"], r["method"], r["sweep_value"])].append(r)
    multi = len({(k[1], k[2]) for k in groups if k[0] == "student"}) > 1
    rows = []
    for (source_kind, teacher, arch, method, value), recs in groups.items():
        if source_kind == "teacher":
            label = f"Teacher {teacher_title(results, teacher)}"
        else:
            label = results["methods"].get(method, method)
            if multi:
                label += f" ({teacher or 'no teacher'} → {arch})"
        if value is not None and source_kind == "student":
            label += f" [{value}]"
        rows.append(
            [
                label,
                *[
                    fmt(values_of([r for r in recs if r["target"] == t], a))
                    for t in targets
                    for a in attacks
                ],
            ]
        )
    lines = ["## Transfer: linear probe on frozen features", ""]
    for t in targets:
        info = next(r["dataset"] for r in records if r["target"] == t)
        lines.append(f"- **{transfer['targets'][t].get('label') or t}:** {describe_data(info)[0]}")
    lines += ["", markdown_table(headers, rows), "", f"{seed_note(records)}.", ""]
    paper = paper_table(results)
    if paper is not None and paper.kind == "transfer":
        p_headers = ["Method"] + [
            f"{paper.printed.get(t, dataset_label(t))} {c}"
            for t in ("stl10", "cifar100")
            for c in ("Nat.", "Adv.")
        ]
        p_rows = []
        for method in ("teacher", "kd", "ard", "gacd"):
            cells = [
                v for t in ("stl10", "cifar100") for v in paper.cells.get((t, method), ("—", "—"))
            ]
            label = paper.printed.get(method, results["methods"].get(method, method))
            p_rows.append([label, *cells])
        lines += [
            "### Transfer, paper (reported)",
            "",
            f"*{paper.caption}* Adv. = {paper.attack}. Not measured by us.",
            "",
            markdown_table(p_headers, p_rows),
            "",
            *[f"> {n}" for n in paper.notes],
            "",
        ]
    return lines
