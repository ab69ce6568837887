"""Export and load time of a 20-million-weight model as a compressed ``.bsc`` file.

A 4096-4096-1024-10 MLP (21.0M weights) pruned to 90% by magnitude, then either left in
float32 (masks only), k-means shared (5 bits) or uniform per-channel 4-bit. For each: the
time to encode and write the file (``export``), to read, verify and decode it into a runnable
model (``read``), the file's size and whether the loaded outputs equal the in-memory model's.
Target (issue 12): encode and decode each under 10 s on 2 cores.

    python benchmarks/file_speed.py [--quick] [--threads 2]

Writes benchmarks/results/file_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

import brainsurgeon as bs
import brainsurgeon.state
from brainsurgeon._io import write_json
from brainsurgeon.container import export, read
from brainsurgeon.data.core import DataBundle, Dataset
from brainsurgeon.pruning.masks import set_mask
from brainsurgeon.utils import environment

RESULTS = Path(__file__).parent / "results"
SEED = 0


def pruned_mlp(spec: str, side: int, sparsity: float) -> torch.nn.Module:
    """The MLP with each weight matrix pruned to ``sparsity`` by magnitude (masks)."""
    torch.manual_seed(SEED)
    model = bs.build_model(spec, (1, side, side), 10)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight.detach()
            cut = w.abs().flatten().kthvalue(int(sparsity * w.numel())).values
            set_mask(module, "weight", w.abs() > cut)
    return model


def tiny_data(side: int) -> DataBundle:
    """Random calibration data of the model's input shape (k-means and uniform need none, but
    the quantize verb takes a data bundle)."""
    g = torch.Generator().manual_seed(SEED)
    split = Dataset(torch.randn(64, 1, side, side, generator=g), torch.randint(0, 10, (64,)))
    return DataBundle("random", split, split, split, 10, {}, {"name": "random"})


def one_case(model, name: str, out: Path) -> dict:
    start = time.perf_counter()
    table = export(model, out)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    loaded = read(out).model
    decode_s = time.perf_counter() - start
    x = torch.randn(4, *bs.state.spec_of(model)["input_shape"])
    with torch.no_grad():
        same = torch.equal(model.eval()(x), loaded(x))
    weights = sum(r["params"] for r in table.rows if r["encoding"] == "weight")
    codecs = sorted({c for r in table.rows for c in r.get("codecs", {}).values()})
    print(
        f"{name:>10}: {weights:,} weights, file {table.file_bytes:,} B ({table.ratio:.1f}x), "
        f"export {encode_s:.2f} s, read {decode_s:.2f} s, identical outputs: {same}",
        file=sys.stderr,
    )
    return {
        "case": name,
        "weights": weights,
        "file_bytes": table.file_bytes,
        "fp32_bytes": table.fp32_bytes,
        "ratio": table.ratio,
        "export_seconds": round(encode_s, 3),
        "read_seconds": round(decode_s, 3),
        "identical_outputs": same,
        "codecs": codecs,
        **table.weights(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 1024-wide MLP instead")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec, side = ("mlp:1024-1024-256-10", 32) if args.quick else ("mlp:4096-4096-1024-10", 64)
    base = pruned_mlp(spec, side, 0.9)
    data = tiny_data(side)
    cases = {"masks": base}
    for label, config in (
        ("kmeans-5", bs.quant_config("kmeans", bits=5, max_iter=20)),
        ("uniform-4", bs.quant_config("uniform", bits=4)),
    ):
        model = copy.deepcopy(base)
        start = time.perf_counter()
        bs.quantize(model, config, data, progress=False)
        print(f"quantized {label} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        cases[label] = model
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in cases.items():
            rows.append(one_case(model, name, Path(tmp) / f"{name}.bsc"))
    out = RESULTS / ("file_speed-quick.json" if args.quick else "file_speed.json")
    write_json(
        out,
        {
            "benchmark": "file_speed",
            "model": spec,
            "sparsity": 0.9,
            "seed": SEED,
            "threads": args.threads,
            "target": "export and read each under 10 s on 2 cores",
            "results": rows,
            "environment": environment(),
        },
    )
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
