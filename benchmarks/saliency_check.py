"""The saliency-check table on LeNet-300-100 (MNIST): how well each criterion ranks the
measured damage of 2,000 sampled weights.

    python benchmarks/saliency_check.py [--quick] [--weights 2000] [--samples 1000]

Writes benchmarks/results/saliency_check.json. Every criterion sees the same sampled weights
and calibration samples; the true damage is measured in float64.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from pruning_oneshot import RESULTS, trained_lenet300

from brainsurgeon._io import write_json
from brainsurgeon.data import load_data
from brainsurgeon.pruning import make_criterion
from brainsurgeon.pruning.saliency_check import saliency_check
from brainsurgeon.training import evaluate
from brainsurgeon.utils import environment

# (label, criterion, options): the variants worth comparing on a 266k-weight ReLU net.
VARIANTS = [
    ("obd ggn", "obd", {"hessian": "ggn"}),
    ("obd fisher", "obd", {"hessian": "fisher"}),
    ("obd hutchinson-20", "obd", {"hessian": "hutchinson", "probes": 20}),
    ("obd-sd sd", "obd-sd", {}),
    ("obd-sd mean", "obd-sd", {"statistic": "mean"}),
    ("obs woodfisher-128", "obs", {"block_size": 128}),
    ("obs default", "obs", {}),  # block size from the memory budget, GGN, relative damping
    ("taylor1 abs", "taylor1", {"mode": "abs"}),
    ("taylor1 signed", "taylor1", {"mode": "signed"}),
    ("layerwise-obs", "layerwise-obs", {}),
    ("dropout-regression", "dropout-regression", {"masks": 2000, "keep": 0.95}),
    ("magnitude", "magnitude", {}),
    ("random", "random", {}),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 weights, 300 samples")
    parser.add_argument("--weights", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--skip", default="", help="comma list of variant labels to leave out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.weights, args.samples = 300, 300
    data = load_data("mnist", progress=False)
    model = trained_lenet300(data)
    skip = set(filter(None, args.skip.split(",")))
    built = {
        label: make_criterion(name, **options)
        for label, name, options in VARIANTS
        if label not in skip
    }
    start = time.perf_counter()
    report = saliency_check(
        model,
        built,
        data,
        weights=args.weights,
        seed=args.seed,
        samples=args.samples,
        device="cpu",
        progress=False,
    )
    rows = report["criteria"]
    for row in rows:
        print(
            f"{row['criterion']:22s} spearman {row['spearman']}  kendall {row['kendall']}  "
            f"low-half {row['spearman_low_half']}  mae {row['mae']}  ({row['seconds']} s)",
            file=sys.stderr,
            flush=True,
        )
    truth = report["true_damage"]
    result = {
        "benchmark": "saliency_check",
        "model": "lenet300",
        "data": "mnist",
        "dense_accuracy": evaluate(model, data)["accuracy"],
        "weights": args.weights,
        "samples": args.samples,
        "seed": args.seed,
        "quick": args.quick,
        "true_damage": truth,
        "results": rows,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "environment": environment(),
    }
    name = (
        f"saliency_check{'_quick' if args.quick else ''}{'_' + args.tag if args.tag else ''}.json"
    )
    write_json(RESULTS / name, result)
    print(f"wrote {RESULTS / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
