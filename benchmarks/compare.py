"""Benchmark: `compare` of 5 criteria x 6 sparsities, one shot, on LeNet-300-100 / MNIST.

Acceptance: under 10 minutes on this machine. Writes benchmarks/results/compare.json (timing,
the accuracy table, seed, environment) and leaves the comparison's plots in
benchmarks/results/compare/. ``--quick``: 2 criteria x 2 sparsities on the digits data.

    python benchmarks/compare.py [--quick] [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from brainsurgeon import runs
from brainsurgeon._io import write_json
from brainsurgeon.data import cache_dir, load_data
from brainsurgeon.experiments import CompareConfig, compare
from brainsurgeon.models import build_model
from brainsurgeon.training import TrainConfig, evaluate, fit
from brainsurgeon.utils import environment, seed_everything

HERE = Path(__file__).parent
RESULTS = HERE / "results"
TARGET_SECONDS = 600


def base_run(args) -> Path:
    """The trained model: --run, or LeNet-300-100 trained once (20 epochs), cached in the
    brainsurgeon cache folder (``~/.cache/brainsurgeon/benchmarks``)."""
    if args.run:
        return Path(args.run)
    name, model, epochs = (
        ("digits", "mlp:64-32-10", 10) if args.quick else ("mnist", "lenet300", 20)
    )
    path = cache_dir() / "benchmarks" / f"{model.replace(':', '_')}-{name}-seed{args.seed}"
    if (path / "config.json").exists():
        return path
    data = load_data(name)
    seed_everything(args.seed)
    net = build_model(model, data.input_shape, data.num_classes)
    start = time.perf_counter()
    fit(net, data, TrainConfig(epochs=epochs, lr=0.05, seed=args.seed), progress=False)
    acc = evaluate(net, data)["accuracy"]
    print(f"trained {model} on {name}: {100 * acc:.2f}% in {time.perf_counter() - start:.0f} s")
    runs.save(
        net,
        path,
        config={"data": data.spec, "normalization": data.normalization, "seed": args.seed},
        metrics={"test_accuracy": acc},
    )
    return path


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--run", default=None, help="use this trained run instead")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run = base_run(args)
    if args.quick:
        config = CompareConfig(
            criteria=("random", "magnitude"), sparsities=(0.5, 0.9), samples=200, seed=args.seed
        )
    else:
        config = CompareConfig(
            criteria=("random", "magnitude", "obd", "obd-sd", "obs"),
            sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
            samples=1000,
            seed=args.seed,
            criterion_options={"obs": {"block_size": 128}},
        )
    out = RESULTS / ("compare-quick" if args.quick else "compare")
    start = time.perf_counter()
    payload = compare(run, config, out, device="cpu", force=True, log=print)
    seconds = time.perf_counter() - start
    cells = [c for c in payload["cells"] if c["kind"] == "prune"]
    result = {
        "benchmark": "compare",
        "quick": args.quick,
        "run": str(run),
        "seed": args.seed,
        "config": config.to_dict(),
        "seconds": round(seconds, 1),
        "target_seconds": TARGET_SECONDS,
        "passed": seconds < TARGET_SECONDS,
        "cells": len(cells),
        "cell_seconds_by_criterion": {
            c: round(sum(x["seconds"] for x in cells if x["method"] == c), 1)
            for c in config.criteria
        },
        "baseline_accuracy": payload["baseline"]["accuracy"],
        "accuracy": {
            f"{r['method']}@{r['sparsity']:g}": r["accuracy"]["mean"] for r in payload["summary"]
        },
        "note": "2-core machine shared with other engineers during the run: times are inflated",
        "load_average": os.getloadavg(),
        "environment": environment(),
    }
    write_json(RESULTS / ("compare-quick.json" if args.quick else "compare.json"), result)
    print(f"compare: {len(cells)} cells in {seconds:.0f} s (target < {TARGET_SECONDS} s)")
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
