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
    write_bytes(path, png_bytes(fig))
    return Path(path)


def _grid(n_panels: int, columns: int) -> tuple[Figure, int, int]:
    """A figure sized for ``n_panels`` small plots in rows of at most ``columns``."""
    cols = max(1, min(columns, n_panels))
    rows = max(1, math.ceil(n_panels / cols))
    return _figure(3.2 * cols, 2.4 * rows + 0.4), rows, cols


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
    fig, rows, cols = _grid(len(names), columns)
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
    fig, rows, cols = _grid(len(names), columns)
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


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes (for embedding without a file)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def layer_overview_png(layers: Sequence[Mapping]) -> bytes:
    """Bars per layer: kept fraction of weights and bits per weight (rows of ``summarize``)."""
    names = [str(r["name"]) for r in layers]
    kept = [1.0 - float(r["sparsity"]) for r in layers]
    bits = [float(r["bits_per_weight"]) for r in layers]
    fig = _figure(7.0, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(names, kept, color="#3b7dd8")
    ax1.set_ylim(0, 1)
    ax1.set_title("fraction of weights kept")
    ax2.bar(names, bits, color="#d8893b")
    ax2.axhline(32, color="grey", lw=0.8, ls="--")
    ax2.set_title("stored bits per weight (fp32 = 32)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=45)
    return png_bytes(fig)


def weight_histogram_png(weights: Mapping[str, np.ndarray], bins: int = 80) -> bytes:
    """Histogram of the nonzero weights of each layer (log counts)."""
    fig = _figure(7.0, 3.6)
    ax = fig.subplots()
    for name, values in weights.items():
        values = values[values != 0]
        if values.size:
            ax.hist(values, bins=bins, histtype="step", log=True, label=f"{name} ({values.size:,})")
    ax.set_title("nonzero weights per layer")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log)")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def accuracy_size_png(points: Sequence[tuple[str, int, float]]) -> bytes:
    """Accuracy (%) against file size (bytes, log scale), points in order and labelled."""
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    sizes = [p[1] for p in points]
    acc = [100 * p[2] for p in points]
    ax.plot(sizes, acc, "-o", color="#3b6ea8")
    for label, x, y in zip([p[0] for p in points], sizes, acc, strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("compressed file size (bytes, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)
