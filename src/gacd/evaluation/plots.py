"""Figures as PNG files: correlation-difference heatmaps, t-SNE panels, sweep lines.

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg canvas directly,
never through pyplot: no display is needed, no global backend is switched under whoever
imports this, and no figure is left open in pyplot's registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gacd.evaluation.analysis import ADVERSARIAL_B, NATURAL_A, NATURAL_B

# The paper's Figure 5 colours.
KIND_STYLE = {
    NATURAL_A: ("tab:blue", "natural {a}"),
    NATURAL_B: ("tab:green", "natural {b}"),
    ADVERSARIAL_B: ("tab:red", "adversarial {b}"),
}
# Light = small difference, as in the paper's Figures 3-4 ("reductions (light color)").
HEATMAP_CMAP = "magma_r"
MAX_TICK_LABELS = 25


def _save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _class_ticks(ax: Axes, class_names: Sequence[str]) -> None:
    n = len(class_names)
    step = max(1, int(np.ceil(n / MAX_TICK_LABELS)))  # many classes: label every step-th
    ticks = np.arange(0, n, step)
    names = [str(class_names[i]) for i in ticks]
    size = 8 if len(ticks) <= 12 else 6
    ax.set_xticks(ticks, names, rotation=90 if max(len(s) for s in names) > 2 else 0, fontsize=size)
    ax.set_yticks(ticks, names, fontsize=size)


def correlation_heatmaps(
    natural: np.ndarray,
    adversarial: np.ndarray,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    vmax: float | None = None,
) -> Path:
    """Two heatmaps of |corr_teacher - corr_student| (natural, adversarial) side by side on
    one colour scale from 0 to `vmax` (default: the larger maximum of the two); pass the
    same `vmax` to several students' figures to make them comparable."""
    natural, adversarial = np.asarray(natural), np.asarray(adversarial)
    c = natural.shape[0]
    if natural.shape != (c, c) or adversarial.shape != (c, c):
        raise ValueError(f"need two C x C matrices, got {natural.shape} and {adversarial.shape}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} classes")
    if vmax is None:
        vmax = float(max(np.nanmax(natural), np.nanmax(adversarial)))
    vmax = vmax if vmax > 0 else 1.0  # an all-zero difference still gets a scale
    side = 3.2 + 0.12 * min(c, 40)  # grows with the class count, capped at ~8 inches
    fig = Figure(figsize=(2 * side + 1.2, side + 0.8), layout="constrained")
    axes = fig.subplots(1, 2)
    image = None
    for ax, matrix, label in zip(
        axes, (natural, adversarial), ("natural", "adversarial"), strict=True
    ):
        off = matrix[~np.eye(c, dtype=bool)]
        image = ax.imshow(matrix, cmap=HEATMAP_CMAP, vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{label} inputs\nmean off-diagonal {np.nanmean(off):.3f}")
        _class_ticks(ax, names)
        ax.set_xlabel("class")
        ax.set_ylabel("class")
    fig.colorbar(image, ax=list(axes), shrink=0.85, label="|corr teacher - corr student|")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def tsne_grid(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    class_names: tuple[str, str] = ("a", "b"),
    subtitles: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """One scatter panel per model: `panels[name] = (coords [N, 2], kinds [N])`, natural
    class a in blue, natural class b in green, adversarial class b in red (Figure 5)."""
    if not panels:
        raise ValueError("no t-SNE panels to draw")
    n = len(panels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.6 * cols, 3.6 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    a, b = class_names
    for ax, (name, (coords, kinds)) in zip(axes[:n], panels.items(), strict=True):
        coords, kinds = np.asarray(coords), np.asarray(kinds)
        for kind, (colour, label) in KIND_STYLE.items():
            pts = coords[kinds == kind]
            ax.scatter(
                pts[:, 0],
                pts[:, 1],
                s=12,
                c=colour,
                alpha=0.75,
                linewidths=0,
                label=label.format(a=a, b=b),
            )
        text = name if not subtitles or name not in subtitles else f"{name}\n{subtitles[name]}"
        ax.set_title(text, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, markerscale=2)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def line_plot_with_spread(
    x: Sequence[float],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    path: str | Path,
    log_x: bool = False,
) -> Path:
    """One line per series, `series[name] = (means, stds)` over the points `x`, with a band
    of mean +- std (no band where std is nan, e.g. a single seed); `log_x` for sweeps over
    powers such as the number of negatives k. Writes a PNG to `path` and returns it."""
    xs = np.asarray(x, dtype=np.float64)
    if not series:
        raise ValueError("no series to plot")
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for name, (means, stds) in series.items():
        m = np.asarray(means, dtype=np.float64)
        s = np.asarray(stds, dtype=np.float64)
        if m.shape != xs.shape or s.shape != xs.shape:
            raise ValueError(
                f"series '{name}': {m.shape[0] if m.ndim else 0} means and "
                f"{s.shape[0] if s.ndim else 0} stds for {xs.shape[0]} x values"
            )
        (line,) = ax.plot(xs, m, marker="o", label=name)
        ax.fill_between(
            xs, m - s, m + s, where=~np.isnan(s), color=line.get_color(), alpha=0.2, lw=0
        )
    if log_x:
        ax.set_xscale("log")
        # Sweep values (16, 64, ...) as tick labels rather than powers of ten.
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def grouped_bars(
    labels: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    ylabel: str = "accuracy (%)",
    title: str | None = None,
) -> Path:
    """One group of bars per label (e.g. a model), one bar per series (e.g. natural, PGD-20,
    APGD-CE): `series[name] = (values, stds)`, error bars where a std is known (not nan),
    each bar annotated with its value. Writes a PNG to `path` and returns it."""
    if not labels or not series:
        raise ValueError("grouped_bars needs labels and at least one series")
    n = len(labels)
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(6.0, 1.25 * n + 2.0), 4.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(n)
    for i, (name, (values, stds)) in enumerate(series.items()):
        v = np.asarray(values, dtype=np.float64)
        s = np.asarray(stds, dtype=np.float64)
        if v.shape != (n,) or s.shape != (n,):
            raise ValueError(f"series '{name}': need {n} values and {n} stds")
        offset = (i - (len(series) - 1) / 2) * width
        rects = ax.bar(x + offset, v, width, label=name, yerr=np.where(np.isnan(s), 0, s))
        ax.bar_label(rects, labels=[f"{val:.0f}" for val in v], fontsize=7, padding=2)
    ax.set_xticks(x, list(labels), rotation=20, ha="right", fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, ncols=len(series))
    if title:
        ax.set_title(title)
    return _save(fig, path)
