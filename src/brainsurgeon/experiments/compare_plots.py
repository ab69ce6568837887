"""Plots and the markdown summary of a comparison (from the ``compare.json`` payload)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..reports.plots import line_plot


def plot_compare(payload: dict[str, Any], out: Path) -> list[Path]:
    """Accuracy against sparsity, and against compression ratio (pruning and quantizers)."""
    rows = payload["summary"]
    base = payload["baseline"]["accuracy"]
    prune_rows = [r for r in rows if r["kind"] == "prune"]
    quant_rows = [r for r in rows if r["kind"] == "quantize"]
    schedule = payload["config"]["schedule"]
    ft = payload["config"]["finetune_epochs"]
    note = f"{schedule}, fine-tune {ft} epoch(s), {payload['config']['seeds']} seed(s)"
    paths = []
    if prune_rows:
        series = {}
        for method in dict.fromkeys(r["method"] for r in prune_rows):
            mine = [r for r in prune_rows if r["method"] == method]
            series[method] = {
                "x": [r["sparsity"] for r in mine],
                "mean": [r["accuracy"]["mean"] for r in mine],
                "std": [r["accuracy"]["std"] for r in mine],
            }
        paths.append(
            line_plot(
                out / "accuracy_vs_sparsity.png",
                series,
                xlabel="sparsity",
                ylabel="test accuracy",
                title=f"Accuracy vs sparsity ({note})",
                reference=base,
            )
        )
    series = {}
    for method in dict.fromkeys(r["method"] for r in prune_rows):
        mine = [r for r in prune_rows if r["method"] == method]
        series[method] = {
            "x": [r["compression_ratio"]["mean"] for r in mine],
            "mean": [r["accuracy"]["mean"] for r in mine],
            "std": [r["accuracy"]["std"] for r in mine],
        }
    if quant_rows:
        series["quantizers"] = {
            "x": [r["compression_ratio"]["mean"] for r in quant_rows],
            "mean": [r["accuracy"]["mean"] for r in quant_rows],
            "std": [r["accuracy"]["std"] for r in quant_rows],
        }
    if series:
        paths.append(
            line_plot(
                out / "accuracy_vs_compression.png",
                series,
                xlabel="compression ratio (dense fp32 bytes / encoded bytes)",
                ylabel="test accuracy",
                title=f"Accuracy vs size ({note})",
                xscale="log",
                reference=base,
            )
        )
    return paths


def markdown(payload: dict[str, Any]) -> str:
    """A short table: mean +- std accuracy per method and sparsity (or quantizer)."""
    cfg = payload["config"]
    base = payload["baseline"]["accuracy"]
    lines = [
        f"# Comparison of {', '.join(cfg['criteria'] + cfg['quantizers'])}",
        "",
        f"run: `{payload['run']}`; schedule {cfg['schedule']}; fine-tuning "
        f"{cfg['finetune_epochs']} epoch(s) at lr {cfg['finetune_lr']}; "
        f"{cfg['samples']} calibration samples (the same for every cell); "
        f"{cfg['seeds']} seed(s). Unpruned test accuracy {100 * base:.2f}%.",
        "",
        "| method | sparsity | accuracy % (mean ± std) | min % | compression x |",
        "|---|---|---|---|---|",
    ]
    for r in payload["summary"]:
        sp = f"{r['sparsity']:g}" if r["sparsity"] is not None else "-"
        a = r["accuracy"]
        lines.append(
            f"| {r['method']} | {sp} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} | "
            f"{100 * a['min']:.2f} | {r['compression_ratio']['mean']:.2f} |"
        )
    best = _best_per_sparsity(payload["summary"])
    if best:
        lines += [
            "",
            "Best criterion per sparsity: "
            + "; ".join(f"{s:g}: {m} ({100 * a:.2f}%)" for s, (m, a) in best.items()),
        ]
    return "\n".join(lines) + "\n"


def _best_per_sparsity(rows) -> dict[float, tuple[str, float]]:
    best: dict[float, tuple[str, float]] = {}
    for r in rows:
        if r["kind"] != "prune":
            continue
        s, acc = r["sparsity"], r["accuracy"]["mean"]
        if s not in best or acc > best[s][1]:
            best[s] = (r["method"], acc)
    return dict(sorted(best.items()))
