"""`gacd report RUN_DIR`: results.json -> report.md in the paper's layout (+ sweep plots).

Tables: rows = methods, column groups = teacher -> student pairs with one sub-column per
attack; mean ± std over seeds where there are several. The paper's reported numbers, when
the experiment names a paper table, come in a separate table labelled "paper (reported)"
right after "ours (measured)"; data is described by what was actually read (its name and
sample counts), so tiny files in CIFAR's format are never called CIFAR results.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gacd.data import DATASETS
from gacd.errors import RunDirectoryError
from gacd.evaluation.results import markdown_table, masking_warnings
from gacd.experiments.paper import PAPER, PaperTable
from gacd.methods import METHODS
from gacd.models import MODELS

REPORT = "report.md"
PLOTS = "plots"


def attack_label(name: str) -> str:
    if name == "natural":
        return "Nat."
    if name == "autoattack":
        return "AutoAttack"
    match = re.fullmatch(r"(pgd|cw)(\d*)", name)
    if match:
        kind = match.group(1).upper()
        return f"{kind}-{match.group(2)}" if match.group(2) else kind
    return name.upper()


def arch_label(name: str | None) -> str:
    return MODELS.get(name).label if name in MODELS else name or "?"


def dataset_label(name: str) -> str:
    return DATASETS.get(name).label if name in DATASETS else name


def method_label(name: str) -> str:
    return (METHODS.get(name).label or name) if name in METHODS else name


def describe_data(info: dict[str, Any] | None) -> tuple[str, bool]:
    """What the data really was, and whether it is the full named dataset."""
    if not info:
        return "unknown data", False
    name = info.get("name", "?")
    record = DATASETS.get(name) if name in DATASETS else None
    pretty = dataset_label(name)
    n_train, n_test = info.get("train_samples"), info.get("test_samples")
    full = record is not None and record.is_full(n_train, n_test) and not info.get("classes")
    counts = f"{n_train} train (incl. validation) / {n_test} test images"
    extra = ""
    if info.get("classes"):
        extra += f", classes {info['classes']} relabelled 0..{len(info['classes']) - 1}"
    if info.get("resize"):
        extra += f", resized to {info['resize']}x{info['resize']}"
    if full:
        return f"{pretty} ({counts}{extra})", True
    if record is not None and record.needs_root:  # read from files anyone could write
        return f"files in {pretty}'s format, NOT the {pretty} dataset ({counts}{extra})", False
    return f"{pretty} ({counts}{extra})", False


def summarise(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean, std = summarise(values)
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


# -- grouping -------------------------------------------------------------------------------
def _records(results: dict[str, Any], kind: str, selection: str) -> list[dict[str, Any]]:
    return [r for r in results["records"] if r["kind"] == kind and r["selection"] == selection]


def _values(records: Iterable[dict[str, Any]], attack: str) -> list[float]:
    return [r["accuracy"][attack] for r in records if attack in r["accuracy"]]


def _attacks(records: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in records:
        for a in r["accuracy"]:
            if a not in seen:
                seen.append(a)
    return seen


def _teacher_title(results: dict[str, Any], name: str | None) -> str:
    if name is None:
        return "no teacher"
    info = results["teachers"].get(name, {})
    if info.get("path"):
        return f"{info.get('label') or name} (exported: {info['path']})"
    method = method_label(info.get("method") or "?")
    return f"{info.get('label') or arch_label(info.get('arch'))} ({method})"


def _seed_note(records: list[dict[str, Any]]) -> str:
    counts = defaultdict(set)
    for r in records:
        counts[(r["stage"].rsplit("/", 1)[0], r["selection"])].add(r["seed"])
    sizes = sorted({len(v) for v in counts.values()})
    if not sizes or sizes == [1]:
        return "one seed per cell"
    return f"mean ± std (sample) over {'/'.join(map(str, sizes))} seeds per cell"


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


def _paper(results: dict[str, Any]) -> PaperTable | None:
    key = results.get("paper")
    return PAPER.get(key) if key else None


def _teachers_section(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for selection in ("best", "last"):
        records = _records(results, "teacher", selection)
        if not records:
            continue
        attacks = _attacks(records)
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            groups[r["teacher"]].append(r)
        datasets = {name: describe_data(recs[0].get("dataset"))[0] for name, recs in groups.items()}
        mixed = len(set(datasets.values())) > 1  # a data column only where teachers differ
        rows = [
            [name, _teacher_title(results, name), *([datasets[name]] if mixed else [])]
            + [fmt(_values(recs, a)) for a in attacks]
            for name, recs in groups.items()
        ]
        headers = ["teacher", "model", *(["data"] if mixed else [])]
        title = "best on validation" if selection == "best" else "last epoch"
        lines += [
            f"### Teachers, ours (measured), {title}",
            "",
            markdown_table(headers + [attack_label(a) for a in attacks], rows),
            "",
            f"{_seed_note(records)}.",
            "",
        ]
    paper = _paper(results)
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
    paper = _paper(results)
    paper_shown = False
    for selection in ("best", "last"):
        records = _records(results, "student", selection)
        swept = [r for r in records if r["sweep_value"] is not None] if dotted else []
        if swept:
            records = [r for r in records if r["sweep_value"] is None]
            if selection == "best":
                names = sorted({results["methods"][r["method"]] for r in swept})
                lines += [f"{', '.join(names)}: see the sweep below.", ""]
        if not records:
            continue
        attacks = _attacks(records)
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
                    fmt(_values(_student_cells(records, teacher, arch, method), a))
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
                f"### Teacher {_teacher_title(results, teacher)} → students, ours (measured), "
                f"{title}",
                "",
                markdown_table(headers, rows),
                "",
                f"{_seed_note(records)}.",
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


def _sweep_section(results: dict[str, Any], run_dir: Path) -> list[str]:
    sweep = results.get("sweep")
    if sweep is None:
        return []
    param = sweep["param"]
    axis = {"method": "method", "arch": "arch", "seed": "seed"}.get(param)
    records = [
        r
        for r in _records(results, "student", "best")
        if r["sweep_value"] is not None or axis is not None
    ]
    if not records:
        return []
    attacks = _attacks(records)
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
        name = f"Teacher {_teacher_title(results, parts.get('teacher'))}"
        if "arch" in parts:
            name += f" → {arch_label(parts['arch'])}"
        if "method" in parts:
            name += f", {results['methods'].get(parts['method'], parts['method'])}"
        rows, series = [], {attack_label(a): ([], []) for a in attacks}
        for value in values:
            cell = [r for r in recs if r["sweep_value"] == value]
            rows.append([value, *[fmt(_values(cell, a)) for a in attacks]])
            for a in attacks:
                vals = _values(cell, a)
                mean, std = summarise(vals) if vals else (math.nan, math.nan)
                series[attack_label(a)][0].append(mean)
                series[attack_label(a)][1].append(std)
        lines += [
            f"### {name}",
            "",
            markdown_table([label] + [attack_label(a) for a in attacks], rows),
            "",
            f"{_seed_note(recs)}; best-on-validation models.",
            "",
        ]
        if numeric and len(values) > 1:
            lines += _sweep_plot(run_dir, param, label, key, values, series, sweep.get("log_x"))
    paper = _paper(results)
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


def _transfer_section(results: dict[str, Any]) -> list[str]:
    transfer = results.get("transfer")
    records = _records(results, "transfer", "last")  # the probe's last epoch
    if not transfer or not records:
        return []
    targets = [t for t in transfer["targets"] if any(r["target"] == t for r in records)]
    attacks = _attacks(records)
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
            label = f"Teacher {_teacher_title(results, teacher)}"
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
                    fmt(_values([r for r in recs if r["target"] == t], a))
                    for t in targets
                    for a in attacks
                ],
            ]
        )
    lines = ["## Transfer: linear probe on frozen features", ""]
    for t in targets:
        info = next(r["dataset"] for r in records if r["target"] == t)
        lines.append(f"- **{transfer['targets'][t].get('label') or t}:** {describe_data(info)[0]}")
    lines += ["", markdown_table(headers, rows), "", f"{_seed_note(records)}.", ""]
    paper = _paper(results)
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
        _sweep_section(results, run_dir),
        _transfer_section(results),
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
