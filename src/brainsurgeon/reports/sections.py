"""Report sections about one run: the summary, the per-layer table, the history.

Every size shown is the compressed file's (:func:`brainsurgeon.container.sizes.file_table`):
the ``.bsc`` on disk, or the file ``brainsurgeon export`` writes for a run directory. The
energy figure is labelled as the estimate it is.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ..structured.api import structured_widths
from ..training import describe, headline

HISTORY_KEYS = (
    ("accuracy", "accuracy %", lambda v: f"{100 * v:.2f}"),
    ("total_sparsity", "sparsity %", lambda v: f"{100 * v:.1f}"),
    ("bits_per_weight", "bits/weight", lambda v: f"{v:.2f}"),
    ("file_bytes", "file bytes", lambda v: f"{v:,}"),
    ("epochs", "epochs", str),
)


def table_html(header: list[str], rows: list[list[Any]], *, css: str) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def overview(run, totals, file, after, prior, lat, energy) -> str:
    """The summary table: model, data, counts, the file's size, accuracy, latency, energy."""
    spec = run.config["model"]
    rows = [
        ("run", str(run.path)),
        (
            "model",
            f"{spec['name']} on input {tuple(spec['input_shape'])}, {spec['num_classes']} classes",
        ),
        ("data", run.config.get("data", {}).get("name", "?")),
        ("parameters", f"{totals['params']:,}"),
        ("nonzeros", f"{totals['nonzeros']:,} ({100 * totals['sparsity']:.2f}% sparse)"),
        (
            "compressed file",
            f"{file['where']} ({file['ratio']:.2f}x smaller than fp32, "
            f"{file['fp32_bytes']:,} B); {file['bits_per_weight']:.2f} bits per nonzero weight, "
            f"{file['bits_per_index']:.2f} bits per index",
        ),
        ("FLOPs / sample", f"{totals['flops']:,} dense, {totals['nonzero_flops']:,} nonzero"),
    ]
    widths = structured_widths(run.config.get("history", []))
    if widths:
        shown = ", ".join(f"{n} {a} -> {b}" for n, (a, b) in widths.items())
        rows.append(("units removed (shrink, merge)", shown))
    metric = headline(after or prior)[0] if (after or prior) else "accuracy"
    if prior is not None:
        rows.append((f"test {metric} before", accuracy_text(prior)))
    if after is not None:
        rows.append(
            (f"test {metric}" + (" after" if prior is not None else ""), accuracy_text(after))
        )
    if lat is not None:
        rows.append(
            (
                "latency (as loaded for inference)",
                f"batch 1: {lat['batch_1_ms']:.3f} ms, batch 64: "
                f"{lat['batch_64_ms']:.3f} ms ({lat['threads']} threads, {lat['device']})",
            )
        )
    rows.append(
        (
            "energy / inference (estimate)",
            f"{energy['energy_nj']:.4g} nJ ({energy['energy_saving']:.2f}x less than dense fp32; "
            "Horowitz 45 nm costs, not a measurement)",
        )
    )
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<h2>Model summary</h2><table class="summary">{body}</table>'


def accuracy_text(ev: dict[str, Any]) -> str:
    if "accuracy" not in ev:  # regression or a custom loss
        return f"{describe(ev)} ({ev['samples']} samples)"
    return f"{100 * ev['accuracy']:.2f}% ({ev['errors']} errors of {ev['samples']})"


def layer_table(summary: dict[str, Any], per_layer: dict[str, dict[str, Any]]) -> str:
    """Per layer: kind (as users know it), shape, counts, bytes and bits in the file, FLOPs."""
    header = ["layer", "kind", "shape", "params", "nonzeros", "sparsity", "bits/weight"]
    header += ["file bytes", "FLOPs", "nonzero FLOPs"]
    rows = []
    for r in summary["layers"]:
        f = per_layer.get(r["name"], {"bytes": 0, "bits_per_weight": None})
        bits = "-" if f["bits_per_weight"] is None else f"{f['bits_per_weight']:.2f}"
        rows.append(
            [r["name"], r["kind"], "x".join(map(str, r["shape"])), f"{r['params']:,}"]
            + [f"{r['nonzeros']:,}", f"{100 * r['sparsity']:.1f}%", bits, f"{f['bytes']:,}"]
            + [f"{r['flops']:,}", f"{r['nonzero_flops']:,}"]
        )
    t = summary["totals"]
    listed = sum(per_layer.get(r["name"], {"bytes": 0})["bytes"] for r in summary["layers"])
    rows.append(
        ["total", "", "", f"{t['params']:,}", f"{t['nonzeros']:,}"]
        + [f"{100 * t['sparsity']:.1f}%", "", f"{listed:,}", f"{t['flops']:,}"]
        + [f"{t['nonzero_flops']:,}"]
    )
    return table_html(header, rows, css="layers")


def history_table(run) -> str:
    """The steps that made the run, one row each, with the figures each step recorded."""
    steps = [s for s in run.config.get("history", []) if isinstance(s, dict)]
    if not steps:
        return '<p class="muted">no history recorded</p>'
    header = ["#", "step", *[label for _, label, _ in HISTORY_KEYS], "details", "from"]
    rows = []
    for i, step in enumerate(steps, 1):
        shown = {key for key, _, _ in HISTORY_KEYS} | {"step", "parent"}
        cells = [fmt(step[k]) if step.get(k) is not None else "" for k, _, fmt in HISTORY_KEYS]
        details = ", ".join(f"{k}={_short(v)}" for k, v in step.items() if k not in shown)
        parent = Path(str(step["parent"])).name if step.get("parent") else ""
        rows.append([i, step.get("step", "?"), *cells, details, parent])
    return table_html(header, rows, css="history")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def size_chart(points: list[tuple[str, int, float]]) -> str:
    """Accuracy against file size (before, the recorded steps, after) as an embedded PNG."""
    from .plots import accuracy_size_png

    points = [p for p in points if p[1] and p[2] is not None]
    if len(points) < 2:
        return ""
    png = base64.b64encode(accuracy_size_png(points)).decode("ascii")
    caption = html.escape("test accuracy against the compressed file's size")
    return (
        f'<div class="plots"><figure><img alt="{caption}" src="data:image/png;base64,{png}" '
        f"onload=\"this.dataset.loaded='1'\"><figcaption>{caption}</figcaption></figure></div>"
    )
