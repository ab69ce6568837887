"""Iterative pruning with fine-tuning to 92% sparsity: LeNet-300-100 on MNIST, per criterion.

Han et al. 2015 keep 8% of LeNet-300-100's weights at 1.59% test error (98.41% accuracy).
Target here: OBD-SD or OBS at >= 98.2% test accuracy.

    python benchmarks/pruning_iterative.py [--quick] [--criteria obs,obd-sd] [--rounds 4]

Each criterion: ``--rounds`` geometric rounds (each removes the same fraction of the remaining
weights), every round followed by ``--epochs`` epochs of SGD fine-tuning at ``--lr`` halved
every 2 epochs. Writes benchmarks/results/pruning_iterative.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback

import torch
from pruning_oneshot import OPTIONS, RESULTS, SKIP, previous_rows, trained_lenet300

from brainsurgeon._io import write_json
from brainsurgeon.data import load_data
from brainsurgeon.pruning import CRITERIA, PruneConfig, prune
from brainsurgeon.training import evaluate
from brainsurgeon.utils import environment

AMOUNT = 0.92


def one_row(model, data, name: str, args) -> dict:
    if name in SKIP:
        return {"criterion": name, "skipped": SKIP[name]}
    config = PruneConfig(
        criterion=name,
        criterion_options=OPTIONS.get(name, {}),
        amount=AMOUNT,
        schedule="iterative",
        rounds=args.rounds,
        finetune_epochs=args.epochs,
        finetune_lr=args.lr,
        samples=args.samples,
        seed=0,
    )
    pruned = copy.deepcopy(model)
    start = time.perf_counter()
    try:
        result = prune(pruned, config, data, device="cpu", progress=False)
    except Exception as err:  # record and go on: one broken criterion must not lose the rest
        return {
            "criterion": name,
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=3),
        }
    seconds = time.perf_counter() - start
    rounds = [
        {k: r.get(k) for k in ("round", "sparsity", "accuracy_pruned", "accuracy")}
        for r in result.rounds
    ]
    return {
        "criterion": name,
        "options": config.criterion_options,
        "total_sparsity": result.total_sparsity,
        "test_accuracy": rounds[-1]["accuracy"],
        "test_error_percent": round(100 * (1 - rounds[-1]["accuracy"]), 2),
        "val_accuracy": evaluate(pruned, data, split="val")["accuracy"],
        "rounds": rounds,
        "seconds": round(seconds, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 epoch, 2 criteria")
    parser.add_argument("--criteria", default=None, help="comma list (default: all)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs per round")
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.epochs = 2, 1
    data = load_data("mnist", progress=False)
    model = trained_lenet300(data)
    dense = evaluate(model, data)["accuracy"]
    default = ["magnitude", "obs"] if args.quick else CRITERIA.names()
    names = args.criteria.split(",") if args.criteria else default
    suffix = ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    path = RESULTS / f"pruning_iterative{suffix}.json"
    rows = previous_rows(path, names) if args.criteria else []
    header = {
        "benchmark": "pruning_iterative",
        "model": "lenet300",
        "data": "mnist",
        "dense_accuracy": dense,
        "amount": AMOUNT,
        "rounds": args.rounds,
        "finetune_epochs_per_round": args.epochs,
        "finetune_lr": args.lr,
        "lr_schedule": "halve every 2 epochs",
        "spacing": "geometric",
        "samples": args.samples,
        "seed": 0,
        "quick": args.quick,
        "reference": "Han et al. 2015: 8% of weights kept, 1.59% test error",
    }
    for name in names:
        rows.append(one_row(model, data, name, args))
        print(
            json.dumps({k: rows[-1].get(k) for k in ("criterion", "test_accuracy", "error")}),
            file=sys.stderr,
            flush=True,
        )
        write_json(path, {**header, "results": rows, "environment": environment()})
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
