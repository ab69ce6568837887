"""Plots for experiments, drawn with matplotlib's Agg canvas (no pyplot, no global state).

Every function writes one PNG atomically and returns its path. Series are given as plain
lists so callers can plot straight from the JSON they also write.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._io import write_bytes

# A series: {"x": [...], "mean": [...], "std": [... or None]}
Series = Mapping[str, Sequence[float] | None]
DPI = 100


def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    write_bytes(path, buf.getvalue())
    return Path(path)


def line_plot(
    path: str | os.PathLike,
    series: Mapping[str, Series],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    xscale: str = "linear",
    reference: float | None = None,
) -> Path:
    """Lines of ``mean`` against ``x`` per label, with a ``mean +- std`` band where given.

    ``reference``: a horizontal dashed line (e.g. the unpruned accuracy).
    """
    fig = _figure()
    ax = fig.add_subplot()
    for label, s in series.items():
        x, mean = np.asarray(s["x"], float), np.asarray(s["mean"], float)
        order = np.argsort(x)
        x, mean = x[order], mean[order]
        (line,) = ax.plot(x, mean, marker="o", markersize=3, label=label)
        std = s.get("std")
        if std is not None and len(std) == len(x):
            std = np.asarray(std, float)[order]
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="unpruned")
    ax.set_xscale(xscale)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def histogram_grid(
    path: str | os.PathLike,
    panels: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    title: str,
    bins: int = 50,
    logy: bool = False,
    columns: int = 3,
) -> Path:
    """One histogram per panel (e.g. per sampled weight or per round), in a grid."""
    names = list(panels)
    cols = max(1, min(columns, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = _figure(3.2 * cols, 2.4 * rows + 0.4)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = np.asarray(panels[name], float)
        values = values[np.isfinite(values)]
        if values.size:
            ax.hist(values, bins=bins, color=f"C{i % 10}", alpha=0.85)
        if logy:
            ax.set_yscale("log")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def scatter(
    path: str | os.PathLike,
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    log: bool = False,
) -> Path:
    """Scatter plot of ``(x, y)`` per label (e.g. SD against mean of per-sample damage)."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, (x, y) in points.items():
        ax.scatter(np.asarray(x, float), np.asarray(y, float), s=4, alpha=0.5, label=label)
    if log:
        ax.set_xscale("symlog", linthresh=1e-8)
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(points) > 1:
        ax.legend(fontsize=8, markerscale=3)
    return _save(fig, path)


def counts_grid(
    path: str | os.PathLike,
    panels: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    title: str,
    logx: bool = False,
    logy: bool = False,
    columns: int = 3,
) -> Path:
    """Precomputed histograms ``{panel: (edges, counts)}`` drawn as bars, in a grid."""
    names = list(panels)
    cols = max(1, min(columns, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = _figure(3.2 * cols, 2.4 * rows + 0.4)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        edges, counts = np.asarray(panels[name][0], float), np.asarray(panels[name][1], float)
        ax.stairs(counts, edges, fill=True, color=f"C{i % 10}", alpha=0.85)
        if logx:
            ax.set_xscale("log")
        if logy and counts.max() > 0:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)
