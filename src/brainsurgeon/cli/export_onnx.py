"""``brainsurgeon export --format onnx``: options, the run and the printed check table."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import emit, say, table

FORMATS = ("bsc", "onnx", "hf")
ONNX_ONLY = ("runtime", "int8", "batch_dynamic", "batch", "check_samples")


def add_onnx_options(p: argparse.ArgumentParser) -> None:
    """``--format`` and the ONNX-only options (checked in :func:`resolve_format`)."""
    p.add_argument(
        "--format",
        default=None,
        metavar="bsc|onnx|hf",
        help="output format (default: from --out's suffix, .onnx -> onnx, else bsc); hf: a "
        "folder transformers.AutoModel.from_pretrained reads (Hugging Face runs)",
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
        help="onnx only: test samples compared with PyTorch before writing (default 256)",
    )


def resolve_format(args: argparse.Namespace) -> str:
    """``bsc`` or ``onnx`` from ``--format`` and ``--out``; refuses contradictions."""
    suffix = Path(args.out).suffix.lower()
    fmt = args.format or ("onnx" if suffix == ".onnx" else "bsc")
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be bsc, onnx or hf, got {fmt!r}")
    if fmt == "hf":
        if args.index_bits is not None or args.codec != "auto":
            raise ConfigError("--index-bits and --codec apply to --format bsc only")
        given = [o for o in ONNX_ONLY if getattr(args, o, None) is not None]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} applies to --format onnx only")
        return fmt
    if fmt == "onnx" and suffix != ".onnx":
        raise ConfigError(f"--format onnx writes a .onnx file; got --out {args.out}")
    if fmt == "bsc" and suffix == ".onnx":
        raise ConfigError(f"--out {args.out} is an ONNX name; pass --format onnx or a .bsc name")
    given = [o for o in ONNX_ONLY if getattr(args, o, None) is not None]
    if fmt == "bsc" and given:
        flags = ", ".join("--" + o.replace("_", "-") for o in given)
        raise ConfigError(f"{flags} apply to --format onnx only")
    if fmt == "onnx" and (args.index_bits is not None or args.codec != "auto"):
        raise ConfigError("--index-bits and --codec apply to --format bsc only")
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
        ["checked on", c["source"]],
        ["max abs diff", f"{c['max_abs_diff']:.3g} (outputs up to {c['max_abs_output']:.3g})"],
        ["relative error", f"{c['relative_error']:.3g} <= tolerance {c['tolerance']:g}"],
    ]
    if "top1_agreement" in c:
        rows.append(["top-1 agreement", f"{100 * c['top1_agreement']:.2f}%"])
    v = p["versions"]
    rows.append(
        ["versions", f"onnx {v['onnx']}, onnxruntime {v['onnxruntime']}, opset {v['opset']}"]
    )
    return table(rows, ["", "onnx export"])
