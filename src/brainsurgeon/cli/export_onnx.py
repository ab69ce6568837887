"""``brainsurgeon export --format onnx|c|hf``: options, the runs and the printed check tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import emit, say, table

FORMATS = ("bsc", "onnx", "hf", "c")
SUFFIXES = {".onnx": "onnx", ".c": "c"}
ONNX_ONLY = ("runtime", "int8", "batch_dynamic", "batch", "check_samples")


def add_onnx_options(p: argparse.ArgumentParser) -> None:
    """``--format`` and the ONNX-only options (checked in :func:`resolve_format`)."""
    p.add_argument(
        "--format",
        default=None,
        metavar="bsc|onnx|hf|c",
        help="output format (default: from --out's suffix, .onnx -> onnx, .c -> c, else bsc); "
        "hf: a folder transformers.AutoModel.from_pretrained reads (Hugging Face runs); c: "
        "one C99 file + header with the weights inside (chain models: Linear, BatchNorm1d, "
        "activations), checked against PyTorch and timed at batch 1",
    )
    p.add_argument(
        "--runtime",
        default=None,
        metavar="dense|int8",
        help="onnx only: float32 graph (dense, default) or int8 MatMul/Gemm by onnxruntime "
        "quantization (int8)",
    )
    p.add_argument(
        "--int8",
        default=None,
        metavar="dynamic|static",
        help="onnx --runtime int8 only: dynamic (default; activations quantized per call) or "
        "static QDQ (activation scales calibrated on 256 training samples)",
    )
    p.add_argument(
        "--batch-dynamic",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="onnx only: the batch axis is dynamic (default); --no-batch-dynamic fixes it "
        "to --batch",
    )
    p.add_argument("--batch", type=int, default=None, help="onnx fixed batch size (default 1)")
    p.add_argument(
        "--check-samples",
        type=int,
        default=None,
        help="onnx and c: test samples compared with PyTorch before writing (default 256)",
    )


def resolve_format(args: argparse.Namespace) -> str:
    """``bsc``, ``onnx``, ``hf`` or ``c`` from ``--format`` and ``--out``; refuses
    contradictions and options of another format."""
    suffix = Path(args.out).suffix.lower()
    fmt = args.format or SUFFIXES.get(suffix, "bsc")
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be bsc, onnx, hf or c, got {fmt!r}")
    if fmt != "bsc" and (args.index_bits is not None or args.codec != "auto"):
        raise ConfigError("--index-bits and --codec apply to --format bsc only")
    if fmt == "onnx" and suffix != ".onnx":
        raise ConfigError(f"--format onnx writes a .onnx file; got --out {args.out}")
    if fmt == "c" and suffix != ".c":
        raise ConfigError(f"--format c writes a .c file (and its .h); got --out {args.out}")
    if fmt == "bsc" and suffix in SUFFIXES:
        raise ConfigError(
            f"--out {args.out} is a {SUFFIXES[suffix]} name; pass --format "
            f"{SUFFIXES[suffix]} or a .bsc name"
        )
    allowed = {"onnx": ONNX_ONLY, "c": ("check_samples",)}.get(fmt, ())
    given = [o for o in ONNX_ONLY if getattr(args, o, None) is not None and o not in allowed]
    if given:
        flags = ", ".join("--" + o.replace("_", "-") for o in given)
        only = "onnx and c" if given == ["check_samples"] else "onnx"
        raise ConfigError(f"{flags} apply to --format {only} only")
    return fmt


def run_hf(args: argparse.Namespace, out: Path) -> int:
    """``--format hf``: the run's model, baked, in the layout transformers loads."""
    from ..models.hf_layout import save_pretrained
    from ..runs import load_run

    run = load_run(args.run)
    say(args, f"exporting {args.run} -> {out}/ (transformers layout)")
    folder = save_pretrained(run.model, out, force=args.force)
    files = sorted(p.name for p in folder.iterdir())
    size = sum(p.stat().st_size for p in folder.iterdir())
    rows = [[str(folder), len(files), size]]
    emit(
        args,
        {"out": str(folder), "files": files, "bytes": size},
        table(rows, ["folder", "files", "bytes"]),
    )
    return 0


def run_onnx(args: argparse.Namespace, out: Path) -> int:
    from ..deploy import DEFAULT_INT8, ONNX_RUNTIMES, export_onnx
    from ..deploy.quantize import MODES

    runtime = args.runtime or "dense"
    if runtime not in ONNX_RUNTIMES:
        raise ConfigError(
            f"--runtime must be dense or int8 for --format onnx, got {runtime!r} (the sparse "
            "runtime's CSR layers have no ONNX form; export them as dense)"
        )
    if args.int8 is not None and runtime != "int8":
        raise ConfigError("--int8 applies to --runtime int8 only")
    if args.int8 is not None and args.int8 not in MODES:
        raise ConfigError(f"--int8 must be dynamic or static, got {args.int8!r}")
    say(args, f"exporting {args.run} -> {out} (onnx, {runtime})")
    result = export_onnx(
        args.run,
        out,
        runtime=runtime,
        int8=args.int8 or DEFAULT_INT8,
        batch_dynamic=True if args.batch_dynamic is None else args.batch_dynamic,
        batch=args.batch or 1,
        check_samples=args.check_samples or 256,
    )
    payload = result.to_dict()
    emit(args, payload, render(payload))
    return 0


def render(p: dict) -> str:
    """The graph's shapes, size and the onnxruntime-vs-PyTorch check."""
    c = p["check"]
    kind = p["runtime"] + (f" ({p['int8']})" if p["int8"] else "")
    rows = [
        ["file", f"{p['path']} ({p['file_bytes']:,} bytes)"],
        ["runtime", kind],
        ["input", f"{p['versions']['input']} {p['input_shape']}"],
        ["output", f"{p['versions']['output']} {p['output_shape']}"],
        *_check_rows(c),
    ]
    v = p["versions"]
    rows.append(
        ["versions", f"onnx {v['onnx']}, onnxruntime {v['onnxruntime']}, opset {v['opset']}"]
    )
    return table(rows, ["", "onnx export"])


def _check_rows(c: dict) -> list[list[str]]:
    """The table rows of a check against PyTorch (:func:`brainsurgeon.deploy.onnx.agreement`)."""
    rows = [
        ["checked on", c["source"]],
        ["max abs diff", f"{c['max_abs_diff']:.3g} (outputs up to {c['max_abs_output']:.3g})"],
        ["relative error", f"{c['relative_error']:.3g} <= tolerance {c['tolerance']:g}"],
    ]
    if "top1_agreement" in c:
        rows.append(["top-1 agreement", f"{100 * c['top1_agreement']:.2f}%"])
    return rows


def run_c(args: argparse.Namespace, out: Path) -> int:
    """``--format c``: the run as C99 source + header, checked and timed (batch 1)."""
    from ..deploy.native import c_latency_ms, export_c, timing_program
    from .runs_common import check_out

    check_out(out.with_suffix(".h"), args.force)  # the header beside it
    say(args, f"exporting {args.run} -> {out} (C99, weights inside)")
    result = export_c(args.run, out, check_samples=args.check_samples or 256)
    blocks = sorted(c_latency_ms(timing_program(out.read_text()), 1, 0.3))
    payload = {**result.to_dict(), "batch1_latency_us": 1e3 * blocks[len(blocks) // 2]}
    emit(args, payload, render_c(payload))
    return 0


def render_c(p: dict) -> str:
    """The C file's shapes, size, its check against PyTorch and its batch-1 latency."""
    c = p["check"]
    rows = [
        ["file", f"{p['path']} ({p['source_bytes']:,} bytes) + {p['header']}"],
        ["function", f"void {p['symbol']}(int n, const float *x, float *y)"],
        ["input", f"n x {p['input_shape']} float32"],
        ["output", f"n x {p['output_shape']} float32"],
        *_check_rows(c),
    ]
    if p.get("normalization"):
        n = p["normalization"]
        rows.append(
            ["inputs", f"normalised as in training: (raw - {n['mean']:.6g}) / {n['std']:.6g}"]
        )
    rows.append(["batch-1 latency", f"{p['batch1_latency_us']:.2f} us (median, compiled here)"])
    rows.append(["compiler", f"{p['compiler']} -O3 -march=native (rebuild with your flags)"])
    return table(rows, ["", "C export"])
