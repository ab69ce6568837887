"""Real int8 execution of Linear layers vs fp32: every CPU int8 path, side by side.

    python benchmarks/int8_latency.py [--quick] [--threads 1 2] [--rounds 5]

Models: a 4096-4096-4096 MLP (two 4096x4096 Linear layers with a ReLU) at batch 64 (and 1),
LeNet-300-100 at batch 1 and 64. Paths (``int8_variants.VARIANTS``): PyTorch fp32 (the
reference), torch.ao dynamic int8 (``brainsurgeon.quantization.to_int8``), onnxruntime fp32,
onnxruntime dynamic int8 (int8 / uint8 weights, per channel / per tensor), onnxruntime static
QDQ int8 (calibrated on 64 fresh samples of the input distribution) and torchao's int8
config when torchao imports (it is not a dependency; put an unpacked wheel on PYTHONPATH).
All paths of one (model, batch, threads) are timed in interleaved rounds (each round times
every path once, median of its calls); the fastest of the rounds' medians is kept and
``speedup = torch fp32 / path``. Output error is against PyTorch fp32 on the timed batch:
``max_abs_diff`` and ``relative_error = max_abs_diff / max |y_fp32|``.

Writes benchmarks/results/int8_latency.json (``-quick`` with --quick); ``rows`` keeps the
earlier fields (fp32_ms, int8_ms = torch.ao, speedup, max_abs_diff) per model/batch/threads.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_variants import VARIANTS, Skip, median_ms  # noqa: E402

from brainsurgeon._io import write_json  # noqa: E402
from brainsurgeon.models import build_model  # noqa: E402
from brainsurgeon.utils import environment, seed_everything  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0
EXACT_ENOUGH = 0.05  # relative error bound of the int8 export check (deploy.INT8_TOLERANCE)


def big_mlp(width: int = 4096) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))


def cases(quick: bool) -> list[tuple[str, nn.Module, tuple[int, ...], int]]:
    seed_everything(SEED)
    mlp = big_mlp().eval()
    lenet = build_model("lenet300", (1, 28, 28), 10).eval()
    out = [("mlp-4096x4096x4096", mlp, (4096,), 64), ("lenet300", lenet, (1, 28, 28), 1)]
    if not quick:
        out += [("mlp-4096x4096x4096", mlp, (4096,), 1), ("lenet300", lenet, (1, 28, 28), 64)]
    return out


def build_all(model, x, threads: int) -> tuple[dict, dict]:
    fns, skipped = {}, {}
    for name, (_, build) in VARIANTS.items():
        try:
            fns[name] = build(model, x, threads)
        except Skip as exc:
            skipped[name] = str(exc)
    return fns, skipped


def one(name, model, shape, batch, threads: int, rounds: int, budget: float) -> dict:
    torch.set_num_threads(threads)
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(SEED))
    fns, skipped = build_all(model, x, threads)
    with torch.inference_mode():
        ref = model(x)
        errors = {k: float((f(x) - ref).abs().max()) for k, f in fns.items()}
    scale = float(ref.abs().max())
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            times[k].append(median_ms(f, x, budget))
    best = {k: min(v) for k, v in times.items()}
    variants = [
        {
            "variant": k, "description": VARIANTS[k][0], "ms": best[k],
            "round_medians_ms": times[k], "speedup": best["torch-fp32"] / best[k],
            "max_abs_diff": errors[k], "relative_error": errors[k] / max(scale, 1e-12),
        }
        for k in fns
    ]  # fmt: skip
    for v in variants:
        say(
            f"{name:<19} b{batch:<3} {threads}t {v['variant']:<26} {v['ms']:9.3f} ms "
            f"{v['speedup']:6.2f}x  rel err {v['relative_error']:.2e}"
        )
    return {
        "model": name, "batch": batch, "threads": threads, "variants": variants,
        "skipped": skipped, "loadavg": os.getloadavg(),
    }  # fmt: skip


def legacy_row(case: dict) -> dict:
    """The earlier ``rows`` fields: torch fp32 vs torch.ao int8."""
    v = {r["variant"]: r for r in case["variants"]}
    fp, q = v["torch-fp32"], v["torch-ao-int8"]
    return {
        "model": case["model"], "batch": case["batch"], "threads": case["threads"],
        "fp32_ms": fp["ms"], "int8_ms": q["ms"], "speedup": fp["ms"] / q["ms"],
        "max_abs_diff": q["max_abs_diff"],
    }  # fmt: skip


def fastest_exact(results: list[dict]) -> dict:
    """Per threads: the fastest int8 path on the MLP at batch 64 within EXACT_ENOUGH."""
    out = {}
    for case in results:
        if not (case["model"].startswith("mlp") and case["batch"] == 64):
            continue
        ok = [
            v for v in case["variants"]
            if "int8" in v["variant"] or "qdq" in v["variant"] or "dynamic" in v["variant"]
        ]  # fmt: skip
        ok = [v for v in ok if v["relative_error"] <= EXACT_ENOUGH]
        best = max(ok, key=lambda v: v["speedup"])
        out[f"{case['threads']} thread(s)"] = {
            "variant": best["variant"], "speedup": best["speedup"],
            "relative_error": best["relative_error"], "goal >= 8x met": best["speedup"] >= 8,
        }  # fmt: skip
    return out


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer cases, shorter rounds")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = ap.parse_args(argv)
    budget = 0.1 if args.quick else 0.3
    rounds = 2 if args.quick else args.rounds
    results = [
        one(name, model, shape, batch, t, rounds, budget)
        for t in args.threads
        for name, model, shape, batch in cases(args.quick)
    ]
    out = {
        "benchmark": "int8_latency",
        "seed": SEED,
        "quick": args.quick,
        "method": "interleaved rounds, fastest of the rounds' medians; speedup vs torch fp32",
        "rounds": rounds,
        "backend": torch.backends.quantized.engine,
        "variants": {k: d for k, (d, _) in VARIANTS.items()},
        "cases": results,
        "rows": [legacy_row(c) for c in results],
        "fastest_exact_int8": fastest_exact(results),
        "exact_enough_relative_error": EXACT_ENOUGH,
        "loadavg_end": os.getloadavg(),
        "note": "timed on a shared 2-core machine; re-run when quiet for final figures",
        "environment": environment(),
    }
    write_json(RESULTS / ("int8_latency-quick.json" if args.quick else "int8_latency.json"), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
