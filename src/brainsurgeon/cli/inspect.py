"""``brainsurgeon inspect``: per-layer table of a run (params, nonzeros, sparsity, bytes, FLOPs)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_common, emit, table
from .runs_common import open_run

EPILOG = """\
examples:
  brainsurgeon inspect runs/lenet300
  brainsurgeon inspect runs/lenet300-pruned --latency --sram 512KB
  brainsurgeon inspect runs/lenet300 --json | python -m json.tool

bytes = what the weights take as stored: fp32 for dense tensors, the quantizer's own
accounting (indices + codebooks) for quantized ones. FLOPs are per input sample (2 per
multiply-add; LSTM/GRU gates per time step, attention projections, QK^T and AV);
'nz FLOPs' counts only multiply-adds with a nonzero weight. Below the table: sparsity over
every parameter and over the compressible tensors, and each parameter left dense with why."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-layer table: params, nonzeros, bytes, FLOPs",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--latency",
        action="store_true",
        help="also measure latency at batch 1 and 64 (median over repeats)",
    )
    p.add_argument(
        "--sram",
        default=None,
        help="on-chip memory budget for the energy estimate, e.g. 512KB, 2MB",
    )
    add_common(p, seed=False)
    p.set_defaults(func=run)


def inspect_payload(r, *, latency: bool, sram: str | None, example=None) -> dict[str, Any]:
    """The inspect payload of run ``r``; ``example``: an input for FLOPs (default: zeros of the
    recorded input shape, token ids for an embedding model)."""
    from ..container.sizes import file_table, layer_bytes
    from ..metrics import example_input, inspect_model, measure_latency

    source = example if example is not None else tuple(r.config["model"]["input_shape"])
    x = example_input(source, r.model)
    payload: dict[str, Any] = {
        "run": str(r.path),
        "model": r.config["model"]["name"],
        **inspect_model(r.model, x),
    }
    energy = _energy(r.model, x, sram)
    if energy is not None:
        payload["energy"] = energy
    if latency:
        payload["latency"] = measure_latency(r.model, source)
    if "test_accuracy" in r.metrics:
        payload["test_accuracy"] = r.metrics["test_accuracy"]
    from ..structured.api import structured_widths

    widths = structured_widths(r.config.get("history", []))
    if widths:
        payload["widths"] = widths
    payload["file"] = file_table(r)
    payload["file_layers"] = layer_bytes(payload["file"])
    return payload


def _energy(model, shape, sram):
    try:
        from ..metrics.energy import energy_report, parse_size
    except ImportError:
        if sram is not None:
            from ..errors import ConfigError

            raise ConfigError(
                "--sram needs the energy estimate, which this install lacks"
            ) from None
        return None
    sram_bytes = parse_size(sram) if sram is not None else None
    return energy_report(model, shape, sram_bytes=sram_bytes)


def render(payload: dict[str, Any]) -> str:
    f, per_layer = payload["file"], payload["file_layers"]
    rows = [_layer_row(r, per_layer.get(r["name"])) for r in payload["layers"]]
    t = payload["totals"]
    listed = sum(per_layer[r["name"]]["bytes"] for r in payload["layers"] if r["name"] in per_layer)
    total = [t["params"], t["nonzeros"], f"{100 * t['sparsity']:.1f}%", listed, ""]
    rows.append(["TOTAL", "", *total, t["flops"], t["nonzero_flops"]])
    header = ["layer", "shape", "params", "nonzeros", "sparsity", "file B", "bits/w"]
    other = f["file_bytes"] - listed - f["header_bytes"] - f["framing_bytes"]
    lines = [
        f"{payload['run']}  ({payload['model']})",
        table(rows, [*header, "FLOPs", "nz FLOPs"]),
        f"compressed file: {f['where']} ({f['ratio']:.2f}x smaller than fp32, "
        f"{f['fp32_bytes']:,} bytes): layers {listed:,} B, other tensors {other:,} B, "
        f"header {f['header_bytes']:,} B, framing {f['framing_bytes']} B",
        f"weights: {f['bits_per_weight']:.2f} bits per nonzero weight (codes + codebooks), "
        f"{f['bits_per_index']:.2f} bits per index (dense positions code zeros as values)",
        *_sparsity_lines(payload),
    ]
    if "widths" in payload:
        shown = ", ".join(f"{n} {a} -> {b}" for n, (a, b) in payload["widths"].items())
        lines.append(f"widths (units before -> after structured removal): {shown}")
    lines += _footer(payload)
    return "\n".join(lines)


def _layer_row(r: dict[str, Any], in_file: dict[str, Any] | None) -> list[Any]:
    """One layer: counts, its tensors' bytes in the file, bits per nonzero weight there."""
    bits = None if in_file is None else in_file["bits_per_weight"]
    return [
        r["name"],
        "x".join(map(str, r["shape"])),
        r["params"],
        r["nonzeros"],
        f"{100 * r['sparsity']:.1f}%",
        0 if in_file is None else in_file["bytes"],
        "-" if bits is None else f"{bits:.2f}",
        r["flops"],
        r["nonzero_flops"],
    ]


def _footer(payload: dict[str, Any]) -> list[str]:
    """Recorded accuracy, latency and energy lines (those the payload has)."""
    lines: list[str] = []
    if isinstance(payload.get("test_accuracy"), int | float):
        lines.append(f"test accuracy (recorded): {100 * payload['test_accuracy']:.2f}%")
    if "latency" in payload:
        lat = payload["latency"]
        lines.append(
            f"latency: batch 1 {lat['batch_1_ms']:.3f} ms, batch 64 "
            f"{lat['batch_64_ms']:.3f} ms ({lat['threads']} threads, {lat['device']})"
        )
    if "energy" in payload:
        e = payload["energy"]
        fits = e.get("fits_sram")
        fit_text = "" if fits is None else f"; fits SRAM budget: {'yes' if fits else 'no'}"
        lines.append(
            f"energy estimate (45 nm, Horowitz; an estimate, not a measurement): "
            f"{e.get('total_nj', e.get('energy_nj', 0)):.3g} nJ per inference{fit_text}"
        )
    return lines


def _sparsity_lines(payload: dict[str, Any]) -> list[str]:
    """Sparsity over every parameter and the compressible ones, then what is left dense."""
    if "parameters" not in payload:
        return []
    every, comp = payload["parameters"], payload["compressible"]
    lines = [
        f"sparsity: {100 * every['sparsity']:.1f}% of all {every['params']:,} parameters, "
        f"{100 * comp['sparsity']:.1f}% of the {comp['params']:,} in "
        f"{comp['tensors']} compressible tensors"
    ]
    dense = payload.get("left_dense", [])
    if dense:
        lines.append(f"left dense ({len(dense)}):")
        lines += [f"  {d['name']} ({d['params']:,}): {d['reason']}" for d in dense]
    return lines


def run(args: argparse.Namespace) -> int:
    r = open_run(args)
    payload = inspect_payload(r, latency=args.latency, sram=args.sram)
    emit(args, payload, render(payload))
    return 0
