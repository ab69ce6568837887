"""Real int8 execution of Linear layers vs fp32: measured latency at batch 1 and 64.

    python benchmarks/int8_latency.py [--quick] [--threads N]

Writes benchmarks/results/int8_latency.json (int8_latency-quick.json with --quick). Models:
a 4096-4096-4096 MLP (two 4096x4096 Linear layers with a ReLU) and LeNet-300-100. The int8
path is ``brainsurgeon.quantization.to_int8`` (torch dynamic quantization: int8 weights,
activations quantized per batch, fbgemm/x86 kernels). Timings are medians of
``torch.utils.benchmark`` blocked_autorange; ``speedup = fp32 / int8`` (< 1: int8 slower).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from brainsurgeon._io import write_json
from brainsurgeon.models import build_model
from brainsurgeon.quantization import compare_latency
from brainsurgeon.utils import environment, seed_everything

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0


def big_mlp(width: int = 4096) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(SEED)
    min_run = 0.5 if args.quick else 3.0
    models = {
        "mlp-4096x4096x4096": (big_mlp(), (4096,)),
        "lenet300": (build_model("lenet300", (1, 28, 28), 10), (1, 28, 28)),
    }
    results = []
    for name, (model, shape) in models.items():
        for row in compare_latency(
            model, shape, batch_sizes=(1, 64), min_run_time=min_run, seed=SEED
        ):
            row = {"model": name, **row}
            results.append(row)
            print(
                f"{name:<20} batch {row['batch']:>3}: fp32 {row['fp32_ms']:8.3f} ms  "
                f"int8 {row['int8_ms']:8.3f} ms  speedup {row['speedup']:5.2f}x",
                file=sys.stderr,
                flush=True,
            )
    big64 = next(r for r in results if r["model"].startswith("mlp") and r["batch"] == 64)
    out = {
        "benchmark": "int8_latency",
        "seed": SEED,
        "quick": args.quick,
        "min_run_time_s": min_run,
        "backend": torch.backends.quantized.engine,
        "rows": results,
        "target": {
            "mlp-4096 batch 64 speedup >= 5x": {
                "value": big64["speedup"],
                "met": big64["speedup"] >= 5.0,
            }
        },
        "environment": environment(),
    }
    write_json(RESULTS / ("int8_latency-quick.json" if args.quick else "int8_latency.json"), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
