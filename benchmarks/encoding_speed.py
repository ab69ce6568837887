"""Encoding speed and size: 20M-symbol streams through raw, Huffman and the ANS coder.

    python benchmarks/encoding_speed.py [--quick] [--count 20000000] [--repeats 1]

Two 5-bit streams of ``count`` symbols, as Deep Compression produces them:

* ``kmeans_indices``: Laplace-distributed weights quantized to 32 linearly initialised
  centroids over ``[-3 sigma, 3 sigma]`` (Han et al. 2016), so cluster populations peak
  in the middle;
* ``gaps``: 5-bit relative indices (fillers included) of a random 11%-dense keep mask.

For each stream and codec: encode and decode seconds (best of ``--repeats``; the machine is
shared with other jobs, so these are upper bounds), stored bytes, bits per symbol and the
ratio to the order-0 entropy ``entropy_bits / 8``. Every decode is checked to equal the
input (exit 1 otherwise). Writes ``benchmarks/results/encoding_speed.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from brainsurgeon._io import write_json
from brainsurgeon.encoding import decode_stream, encode_stream, entropy, entropy_bits, gap_encode
from brainsurgeon.utils import environment

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SECONDS = 10.0


def kmeans_indices(count: int, seed: int = 0) -> np.ndarray:
    """5-bit indices of Laplace weights on 32 linear centroids over +-3 sigma."""
    w = np.random.default_rng(seed).laplace(0.0, 1.0 / np.sqrt(2.0), count)
    edges = np.linspace(-3.0, 3.0, 33)[1:-1]
    return np.searchsorted(edges, w).astype(np.uint32)


def gap_stream(count: int, density: float = 0.11, seed: int = 1) -> tuple[np.ndarray, dict]:
    """At least ``count`` 5-bit gap fields of a random keep mask, cut to ``count``."""
    n = int(count / density * 1.02)
    mask = np.random.default_rng(seed).random(n, dtype=np.float32) < density
    t = time.perf_counter()
    gaps, filler = gap_encode(mask, 5)
    info = {"mask_size": n, "density": density, "gap_encode_seconds": time.perf_counter() - t}
    info["filler_fraction"] = float(filler.mean())
    return gaps[:count], info


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def measure(symbols: np.ndarray, codec: str, bound_bytes: float, repeats: int) -> dict:
    t_enc, stream = timed(lambda: encode_stream(symbols, 32, (codec,)), repeats)
    t_dec, back = timed(lambda: decode_stream(stream), repeats)
    return {
        "encode_seconds": round(t_enc, 4),
        "decode_seconds": round(t_dec, 4),
        "nbytes": stream.nbytes,
        "bits_per_symbol": 8 * stream.nbytes / symbols.size,
        "ratio_to_entropy": stream.nbytes / bound_bytes,
        "round_trip_equal": bool(np.array_equal(back, symbols)),
    }


def run(count: int, repeats: int) -> dict:
    codecs = ["raw", "huffman"] + (["ans"] if entropy.available() else [])
    gaps, gap_info = gap_stream(count)
    streams = {"kmeans_indices": (kmeans_indices(count), {}), "gaps": (gaps, gap_info)}
    results = {}
    for name, (symbols, info) in streams.items():
        bound = entropy_bits(symbols, 32) / 8
        row = {"count": int(symbols.size), "entropy_bits_per_symbol": 8 * bound / symbols.size}
        row.update(info)
        row["codecs"] = {c: measure(symbols, c, bound, repeats) for c in codecs}
        row["chosen"] = encode_stream(symbols, 32).codec
        results[name] = row
        print(
            name,
            {
                c: (r["encode_seconds"], r["decode_seconds"], round(r["ratio_to_entropy"], 5))
                for c, r in row["codecs"].items()
            },
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2M symbols, not written")
    args = parser.parse_args(argv)
    count = 2_000_000 if args.quick else args.count
    results = run(count, args.repeats)
    ok = all(r["round_trip_equal"] for s in results.values() for r in s["codecs"].values())
    slow = [
        f"{s}/{c}"
        for s, row in results.items()
        for c, r in row["codecs"].items()
        if max(r["encode_seconds"], r["decode_seconds"]) > TARGET_SECONDS
    ]
    payload = {
        "environment": environment(),
        "note": "single run on a 2-core machine shared with other agents' jobs; times are "
        "upper bounds (best of --repeats)",
        "count": count,
        "repeats": args.repeats,
        "target_seconds": TARGET_SECONDS,
        "over_target": slow,
        "streams": results,
    }
    if not args.quick:
        write_json(RESULTS / "encoding_speed.json", payload)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
