"""Targets and the markdown table of benchmarks/minilm.py's results."""

from __future__ import annotations

from typing import Any

TARGETS = (  # (key, technique rows it applies to, what, threshold on cosine)
    ("sparsegpt_50_cosine_0.98", ("sparsegpt-50", "sparsegpt-50-c512"), 0.98),
    ("sparsegpt_24_cosine_0.95", ("sparsegpt-2:4",), 0.95),
    ("gptq_4_cosine_0.99", ("gptq-4", "gptq-4-g128-act", "gptq-4-g32-act"), 0.99),
)
FILE_TARGET = 90.9e6 / 8  # 1/8 of the fp32 size
FILE_GOAL = 90.9e6 / 12
FIVE_MINUTES = 300.0


def _rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["technique"]: r for r in result.get("rows", []) if "error" not in r}


def _best(rows, names) -> dict[str, Any] | None:
    """The best row among ``names`` and their ``+distill`` variants (by the file's cosine)."""
    found = [rows[n] for base in names for n in (base, f"{base}+distill") if n in rows]
    return max(found, key=_cosine) if found else None


def _cosine(row: dict[str, Any]) -> float:
    return float(row.get("from_file", row)["cosine"])


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target: met or missed, with the row that decides it (no distillation counted
    separately from the distilled variant)."""
    rows = _rows(result)
    out: dict[str, Any] = {}
    for key, names, bar in TARGETS:
        for suffix, pick in (("", lambda n: n), ("+distill", lambda n: f"{n}+distill")):
            found = [rows[pick(n)] for n in names if pick(n) in rows]
            if found:
                best = max(found, key=_cosine)
                out[key + suffix] = {"row": best["technique"], "cosine": _cosine(best),
                                     "met": _cosine(best) >= bar}  # fmt: skip
    for name in ("combined", "combined+distill", "combined-e3", "combined-e3+distill",
                 "combined-q", "combined-q+distill"):  # fmt: skip
        if name in rows:
            r = rows[name]
            out[f"file_{name}"] = {
                "file_bytes": r["file_bytes"],
                "cosine_from_file": _cosine(r),
                "met_1_8_at_0.97": r["file_bytes"] <= FILE_TARGET and _cosine(r) >= 0.97,
                "goal_1_12": r["file_bytes"] <= FILE_GOAL,
                "ratio_vs_fp32": 90.9e6 / r["file_bytes"],
            }
    for name in ("combined", "combined-q"):
        if name not in rows:
            continue
        r = rows[name]
        whole = r["compress_s"] + r.get("export_s", 0.0)
        key = f"{name}_under_5_min"
        out[key] = {
            "compress_s": r["compress_s"], "export_s": r.get("export_s"), "total_s": whole,
            "met": whole < FIVE_MINUTES, "threads": result.get("threads_compression"),
            "loadavg_before": r.get("loadavg_before"),
        }  # fmt: skip
        if f"{name}+distill" in rows:
            d = rows[f"{name}+distill"]
            total = whole + d["distill_s"] + d.get("export_s", 0.0)
            out[key]["with_distill_total_s"] = total
    return out


def markdown(result: dict[str, Any]) -> str:
    """A table of every row and the targets, for benchmarks/results/minilm.md."""
    head = (
        "| technique | cosine | min cos | top-10 | topic acc (LR / NC) | lee-sts rho | file MB "
        "| params / nonzeros (M) | wall s | speedup b1 / b32 | load |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in result.get("rows", []):
        if "error" in r:
            lines.append(f"| {r['technique']} | failed: {r['error'][:80]} |" + " |" * 9)
            continue
        lat = r.get("latency") or {}
        wall = r.get("compress_s")
        if wall is not None and "distill_s" in r:
            wall_s = f"{wall:.0f} + {r['distill_s']:.0f}"
        else:
            wall_s = "" if wall is None else f"{wall:.0f}"
        size = f"{r['file_bytes'] / 1e6:.2f}" if "file_bytes" in r else ""
        speed = (
            f"{lat['speedup_b1']:.2f} / {lat.get('speedup_b32', float('nan')):.2f}" if lat else ""
        )
        load = r.get("loadavg_before") or r.get("loadavg_after") or [float("nan")]
        cos = f"{r['cosine']:.4f}"
        if "from_file" in r:
            cos += f" (file {r['from_file']['cosine']:.4f})"
        lines.append(
            f"| {r['technique']} | {cos} | {r['cosine_min']:.3f} | {r['top10']:.3f} "
            f"| {r['topic_acc_logreg']:.3f} / {r['topic_acc_centroid']:.3f} "
            f"| {r['lee_sts_spearman']:.3f} | {size} "
            f"| {r['parameters'] / 1e6:.2f} / {r['nonzeros'] / 1e6:.2f} | {wall_s} | {speed} "
            f"| {load[0]:.1f} |"
        )
    out = [f"# all-MiniLM-L6-v2: every technique ({'small' if result.get('small') else 'full'})\n"]
    out.append(head + "\n".join(lines) + "\n")
    out.append("\n## Targets\n")
    for key, value in result.get("targets", {}).items():
        out.append(f"- {key}: {value}\n")
    return "".join(out)
