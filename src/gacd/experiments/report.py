"""`gacd report RUN_DIR`: results.json -> report.md in the paper's layout (+ sweep plots).

Tables: rows = methods, column groups = teacher -> student pairs with one sub-column per
attack; mean ± std over seeds where there are several. The paper's reported numbers, when
the experiment names a paper table, come in a separate table labelled "paper (reported)"
right after "ours (measured)"; data is described by what was actually read (its name and
sample counts), so tiny files in CIFAR's format are never called CIFAR results.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from gacd.data import DATASETS
from gacd.errors import RunDirectoryError
from gacd.evaluation.results import markdown_table, masking_warnings
from gacd.experiments.paper import PaperTable
from gacd.experiments.report_format import (
    arch_label,
    attack_label,
    attacks_of,
    dataset_label,
    describe_data,
    fmt,
    records_of,
    seed_note,
    teacher_title,
    values_of,
)
from gacd.experiments.report_sections import PLOTS, paper_table, sweep_section, transfer_section

REPORT = "report.md"


# -- sections -------------------------------------------------------------------------------
def _header(results: dict[str, Any]) -> list[str]:
    lines = [f"# {results.get('title') or results['experiment']}", ""]
    if results.get("smoke"):
        lines += [f"> **{results['notice']}**", ""]
    data_text, full = describe_data(results.get("data"))
    info = results.get("data") or {}
    lines += [
        f"Experiment `{results['experiment']}`, run directory `{results['out']}`"
        + ("" if results.get("finished") else " (**unfinished**: some stages have not run)")
        + ".",
        "",
        f"- **Data:** {data_text}.",
    ]
    if info:
        lines.append(
            f"- **Evaluation:** the {info.get('split', 'test')} split"
            + (f", first {info['max_samples']} samples" if info.get("max_samples") else "")
            + f"; accuracy in %; L-inf eps = {_budget(info.get('eps'))}, "
            f"step {_budget(info.get('step_size'))}."
        )
    described: dict[str, str] = {}
    for r in results["records"]:
        for a, text in r.get("attacks", {}).items():
            described.setdefault(a, text)
    for a, text in described.items():
        lines.append(f"  - {attack_label(a)} (`{a}`): {text}")
    seeds = results.get("seeds") or []
    lines += [
        f"- **Seeds:** {', '.join(map(str, seeds))}.",
        "- **Model selection:** *best* = the epoch with the best validation accuracy "
        "(PGD accuracy for robust methods) on a held-out part of the training set, never the "
        "test set; *last* = the final epoch.",
    ]
    if results.get("notes"):
        lines += ["", str(results["notes"]).strip()]
    name = info.get("name")
    if not full and not results.get("smoke") and name in DATASETS and DATASETS.get(name).needs_root:
        lines += ["", f"> **Note:** these are not {dataset_label(name)} results."]
    return [*lines, ""]


def _budget(value: float | None) -> str:
    if value is None:
        return "?"
    k = value * 255
    if abs(k - round(k)) < 1e-6 and 0 < round(k) <= 32:  # CIFAR budgets read as k/255
        return f"{round(k)}/255 ({value:.4g})"
    return f"{value:.4g}"


def _teachers_section(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for selection in ("best", "last"):
        records = records_of(results, "teacher", selection)
        if not records:
            continue
        attacks = attacks_of(records)
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            groups[r["teacher"]].append(r)
        datasets = {name: describe_data(recs[0].get("dataset"))[0] for name, recs in groups.items()}
        mixed = len(set(datasets.values())) > 1  # a data column only where teachers differ
        rows = [
            [name, teacher_title(results, name), *([datasets[name]] if mixed else [])]
            + [fmt(values_of(recs, a)) for a in attacks]
            for name, recs in groups.items()
        ]
        headers = ["teacher", "model", *(["data"] if mixed else [])]
        title = "best on validation" if selection == "best" else "last epoch"
        lines += [
            f"### Teachers, ours (measured), {title}",
            "",
            markdown_table(headers + [attack_label(a) for a in attacks], rows),
            "",
            f"{seed_note(records)}.",
            "",
        ]
    paper = paper_table(results)
    if paper is not None and paper.kind == "teachers" and lines:
        rows = [
            [paper.printed.get(arch, arch), dataset_label(ds), nat, adv]
            for (ds, arch), (nat, adv) in paper.cells.items()
        ]
        lines += [
            "### Teachers, paper (reported)",
            "",
            f"*{paper.caption}* Adv. = {paper.attack}.",
            "",
            markdown_table(["model", "data", "Nat.", "Adv."], rows),
            "",
        ]
    return (["## Teachers", "", *lines]) if lines else []


def _student_cells(
    records: list[dict[str, Any]], teacher: str | None, arch: str, method: str
) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r["arch"] == arch
        and r["method"] == method
        and (r["teacher"] == teacher or r["teacher"] is None)
    ]


def _students_section(results: dict[str, Any]) -> list[str]:
    sweep = results.get("sweep")
    dotted = sweep is not None and sweep["param"] not in ("method", "arch", "seed")
    lines: list[str] = []
    paper = paper_table(results)
    paper_shown = False
    for selection in ("best", "last"):
        records = records_of(results, "student", selection)
        swept = [r for r in records if r["sweep_value"] is not None] if dotted else []
        if swept:
            records = [r for r in records if r["sweep_value"] is None]
            if selection == "best":
                names = sorted({results["methods"][r["method"]] for r in swept})
                lines += [f"{', '.join(names)}: see the sweep below.", ""]
        if not records:
            continue
        attacks = attacks_of(records)
        archs = [a for a in results["archs"] if any(r["arch"] == a for r in records)]
        methods = [m for m in results["methods"] if any(r["method"] == m for r in records)]
        teachers = [t for t in results["teachers"] if any(r["teacher"] == t for r in records)]
        if not teachers:
            teachers = [None]  # type: ignore[list-item]
        title = "best on validation" if selection == "best" else "last epoch"
        for teacher in teachers:
            headers = ["Method"] + [
                f"{arch_label(arch)} {attack_label(a)}" for arch in archs for a in attacks
            ]
            rows = []
            for method in methods:
                cells = [
                    fmt(values_of(_student_cells(records, teacher, arch, method), a))
                    for arch in archs
                    for a in attacks
                ]
                if all(c == "—" for c in cells):
                    continue
                label = results["methods"][method]
                if (
                    not any(r["teacher"] is not None for r in records if r["method"] == method)
                    and teacher is not None
                ):
                    label += " (no teacher)"
                rows.append([label, *cells])
            lines += [
                f"### Teacher {teacher_title(results, teacher)} → students, ours (measured), "
                f"{title}",
                "",
                markdown_table(headers, rows),
                "",
                f"{seed_note(records)}.",
                "",
            ]
            if selection == "best" and paper is not None and paper.kind == "students":
                shown = _paper_students(results, paper, teacher, archs, methods)
                lines += shown
                paper_shown = paper_shown or bool(shown)
    if lines and paper is not None and paper.kind == "students" and not paper_shown:
        lines += [
            f"Paper (reported): *{paper.caption}* None of its cells matches this run's "
            "teacher → student architectures and methods.",
            "",
        ]
    return (["## Students", "", *lines]) if lines else []


def _paper_students(
    results: dict[str, Any],
    paper: PaperTable,
    teacher: str | None,
    archs: list[str],
    methods: list[str],
) -> list[str]:
    t_arch = results["teachers"].get(teacher or "", {}).get("arch")
    headers = ["Method"] + [
        f"{paper.printed.get(a, arch_label(a))} {c}" for a in archs for c in ("Nat.", "Adv.")
    ]
    rows = []
    for method in methods:
        cells = []
        for arch in archs:
            cell = paper.cells.get((t_arch or "", arch, method))
            cells += list(cell) if cell else ["—", "—"]
        if any(c != "—" for c in cells):
            rows.append([results["methods"][method], *cells])
    if not rows:
        return []
    notes = [f"> {n}" for n in paper.notes]
    return [
        f"### Teacher {paper.printed.get(t_arch or '', t_arch)} → students, paper (reported)",
        "",
        f"*{paper.caption}* Adv. = {paper.attack}. Not measured by us.",
        "",
        markdown_table(headers, rows),
        "",
        *([*notes, ""] if notes else []),
    ]


def _warnings_section(results: dict[str, Any]) -> list[str]:
    lines = []
    for r in results["records"]:
        for w in masking_warnings(r["accuracy"]):
            lines.append(f"- `{r['stage']}` ({r['selection']}): {w}")
    if not lines:
        return []
    return ["## Warnings", "", *lines, ""]


def _analysis_section(run_dir: Path) -> list[str]:
    pngs = sorted(
        p
        for p in run_dir.rglob("*.png")
        if PLOTS not in p.relative_to(run_dir).parts[:1]
        and (
            "analysis" in p.relative_to(run_dir).parts or p.name.startswith(("tsne", "correlation"))
        )
    )
    if not pngs:
        return []
    lines = ["## Analysis figures", ""]
    lines += [
        f"- [{p.relative_to(run_dir).as_posix()}]({p.relative_to(run_dir).as_posix()})"
        for p in pngs
    ]
    return [*lines, ""]


def _stages_section(results: dict[str, Any]) -> list[str]:
    stages = results.get("stages") or []
    if not stages:
        return []
    rows = [
        [
            s["stage"],
            s["status"],
            _epochs_cell(s),
            f"{s['seconds']:.1f}",
            "" if s.get("train_seconds") is None else f"{s['train_seconds']:.1f}",
        ]
        for s in stages
    ]
    wall = results.get("wall_seconds")
    return [
        "## Stages",
        "",
        "Status in the run that wrote this file; *epochs*: trained (and, where a command-line "
        "override changed it, the config file's); *training s*: the sum of the stage's epoch "
        "times (resumed runs included).",
        "",
        markdown_table(["stage", "status", "epochs", "seconds (this run)", "training s"], rows),
        "",
        *([f"Wall time of the run: {wall:.0f} s.", ""] if wall is not None else []),
    ]


def _epochs_cell(stage: dict[str, Any]) -> str:
    run, written = stage.get("epochs"), stage.get("config_epochs")
    if run is None:
        return ""
    return str(run) if written in (None, run) else f"{run} (config: {written})"


def render_report(results: dict[str, Any], run_dir: Path) -> str:
    """The Markdown report of one experiment run (writes sweep PNGs under run_dir/plots)."""
    parts = [
        _header(results),
        _teachers_section(results),
        _students_section(results),
        sweep_section(results, run_dir),
        transfer_section(results),
        _warnings_section(results),
        _analysis_section(run_dir),
        _stages_section(results),
    ]
    if results.get("smoke"):
        parts.append([f"> **{results['notice']}**", ""])
    return "\n".join(line for part in parts for line in part)


def write_report(run_dir: str | Path) -> Path:
    """Render RUN_DIR/report.md from RUN_DIR/results.json."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise RunDirectoryError(f"no results.json in {run_dir}: run `gacd run CONFIG` first")
    results = json.loads(path.read_text())
    if results.get("format") != "gacd-experiment-results-v1":
        raise RunDirectoryError(f"{path} is not a gacd experiment results file")
    out = run_dir / REPORT
    out.write_text(render_report(results, run_dir))
    return out
