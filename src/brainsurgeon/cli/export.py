"""``brainsurgeon export``: write a run as one compressed model file (``.bsc``) and show its bytes.

The file holds the model as it computes (masks, shared weights, codes, factors baked in), each
weight in the smallest exact encoding: positions as Deep Compression's CSR gaps (``--index-bits``
wide, a filler entry when a gap overflows), a bitmask or dense; values as a codebook with
indices, integer codes with scales, or float32; every stream coded raw, by Huffman or by an
entropy coder, whichever is smallest. The table shows, per tensor, the bytes of the codes, the
positions (indices), the codebook/scales and the rest, with bits per nonzero weight and per
index, and the total against fp32 (4 bytes a parameter). Load it with ``brainsurgeon.load``
or pass it to ``evaluate``, ``inspect`` and ``report``.

``--format onnx`` (or an ``--out`` ending in ``.onnx``) writes an ONNX graph instead, dense or
``--runtime int8``, checked against PyTorch in onnxruntime before it is written (needs
``pip install brainsurgeon[deploy]``). ``--format hf`` writes a Hugging Face run as a folder
that ``transformers`` itself loads (masks and quantizers baked; not after surgery).
``--format c`` (or an ``--out`` ending in ``.c``) writes one C99 file with the weights inside
and its header, for chain models (Linear, BatchNorm1d, activations): compiled here, checked
against PyTorch and timed at batch 1 before it is written (needs a C compiler).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command, add_common, emit, say, table
from .export_onnx import add_onnx_options, resolve_format, run_onnx
from .runs_common import check_out

EPILOG = """\
examples:
  brainsurgeon export runs/lenet300-p92-q5 --out lenet300.bsc
  brainsurgeon export runs/lenet300-p92-q5 --out lenet300.bsc --index-bits auto
  brainsurgeon export runs/lenet300-p92-q5 --out lenet300.bsc --codec huffman --json
  brainsurgeon evaluate lenet300.bsc          # accuracy computed from the file
  ls -l lenet300.bsc                          # the size printed is this size
  brainsurgeon export runs/lenet300-shrunk --out lenet300.onnx
  brainsurgeon export runs/lenet300 --format onnx --out lenet300-int8.onnx --runtime int8
  brainsurgeon export runs/minilm-sgpt --format hf --out minilm-sgpt/   # transformers loads it
  brainsurgeon export runs/lenet300-shrunk --out lenet300.c   # + lenet300.h, for a device"""

CODECS = ("auto", "raw", "huffman", "ans")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", "write a run as one .bsc (or .onnx, .c) file", __doc__, EPILOG)
    p.add_argument("run", help="run directory (or a .bsc file to re-encode)")
    p.add_argument("--out", required=True, help="output file, e.g. model.bsc or model.onnx")
    p.add_argument(
        "--index-bits",
        default=None,
        metavar="BITS|auto",
        help="CSR gap width in bits (default: 5 for fully connected, 8 for conv layers, as "
        "in Deep Compression); 'auto' tries 2..10 per tensor and keeps the smallest",
    )
    p.add_argument(
        "--codec",
        default="auto",
        choices=CODECS,
        help="stream codec (default auto: the smallest of raw, huffman and ans per stream)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    add_onnx_options(p)
    add_common(p, device=False, seed=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..container import export

    fmt = resolve_format(args)
    out = check_out(args.out, args.force)
    if fmt == "hf":
        from .export_onnx import run_hf

        if not Path(args.run).exists():
            from ..errors import RunDirError

            raise RunDirError(f"{args.run} does not exist; pass a run directory")
        return run_hf(args, out)
    if out.is_dir():
        from ..errors import RunDirError

        raise RunDirError(f"{out} is a directory; --out takes a file name such as model.bsc")
    if not Path(args.run).exists():
        from ..errors import RunDirError

        raise RunDirError(f"{args.run} does not exist; pass a run directory or a .bsc file")
    if fmt == "onnx":
        return run_onnx(args, out)
    if fmt == "c":
        from .export_onnx import run_c

        return run_c(args, out)
    codecs = None if args.codec == "auto" else ("raw", args.codec)
    say(args, f"exporting {args.run} -> {out}")
    result = export(args.run, out, index_bits=args.index_bits, codecs=codecs)
    payload = result.to_dict()
    emit(args, payload, render(payload, Path(args.run)))
    return 0


HEADER = (
    "tensor", "layer", "params", "nonzeros", "positions", "values", "codec", "values B",
    "index B", "codebook B", "raw B", "total B", "bits/weight", "bits/index",
)  # fmt: skip


def _row(r: dict) -> list:
    bpw, bpi = r.get("bits_per_weight"), r.get("bits_per_index")
    codecs = "/".join(sorted(set(r.get("codecs", {}).values()))) or "-"
    return [
        r["tensor"], r["kind"], r["params"], r["nonzeros"], r["format"], r["values"], codecs,
        r["codes"], r["positions"], r["table"], r["other"], r["bytes"],
        "-" if bpw is None else round(bpw, 2), "-" if bpi is None else round(bpi, 2),
    ]  # fmt: skip


def render(payload: dict, source: Path) -> str:
    """The per-tensor byte table and the totals."""
    lines = [
        table([_row(r) for r in payload["rows"]], HEADER),
        f"header {payload['header_bytes']:,} B + framing {payload['framing_bytes']} B "
        "(magic, version, checksums)",
        f"file {payload['path']}: {payload['file_bytes']:,} bytes on disk; fp32 "
        f"{payload['fp32_bytes']:,} bytes (4 per parameter) -> {payload['ratio']:.1f}x smaller",
    ]
    weights = [r for r in payload["rows"] if r.get("bits_per_weight") is not None]
    if weights:
        lines.append(
            f"weights: {payload['bits_per_weight']:.2f} bits per nonzero weight, "
            f"{payload['bits_per_index']:.2f} bits per index (Han et al. LeNet-300-100 after "
            "Huffman: 5.1 and 3.7)"
        )
    if all(r["values"] == "float32" for r in weights):
        lines.append(
            f"note: {source} has no shared or quantized weights; values are stored as fp32"
        )
    return "\n".join(lines)
