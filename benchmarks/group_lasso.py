"""Regularised removal on LeNet-5's fully connected part (Pan et al. 2016, DropNeuron).

Pan et al. report LeNet-5's FC layers at 1.49% of their weights and 99.07% accuracy with
l1 + DropNeuron. Here: a trained LeNet-5 (``--dense RUN``, or trained here) is fine-tuned
with l1 + group lasso (``TrainConfig(l1=..., group_lasso=...)``); the fc1 neurons that died
are removed (``--granularity neuron`` pruning of exactly the dead ones, then ``shrink``); the
FC weights left are pruned by magnitude in rounds with fine-tuning down to the FC budget.
Reports FC weights kept (against the original 405,000), test accuracy, and the path.

    python benchmarks/group_lasso.py [--dense runs/lenet5] [--quick]

Writes benchmarks/results/group_lasso.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import brainsurgeon as bs
from brainsurgeon._io import write_json
from brainsurgeon.structured.api import shrink_model
from brainsurgeon.utils import environment, seed_everything

RESULTS = Path(__file__).parent / "results"
SEED = 0
FC_WEIGHTS = 800 * 500 + 500 * 10  # LeNet-5 (Caffe) fc1 + fc2
PAN = {"fc_kept_percent": 1.49, "accuracy": 99.07}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fc_nonzeros(model) -> int:
    return sum(int((getattr(model, n).weight != 0).sum()) for n in ("fc1", "fc2"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", default=None, help="a trained lenet5 run directory")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--l1", type=float, default=1e-5)
    ap.add_argument("--group-lasso", type=float, default=2e-4)
    ap.add_argument("--fc-kept", type=float, default=0.015, help="FC budget (Pan: 1.49%)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seed_everything(SEED)
    data = bs.data.load_data("mnist", seed=SEED, progress=False)
    epochs = 1 if args.quick else 8
    if args.dense:
        model = bs.load(args.dense)
    else:
        model = bs.build_model("lenet5", data.input_shape, data.num_classes)
        bs.fit(model, data, bs.TrainConfig(epochs=2 if args.quick else 20, lr=0.02,
                                           weight_decay=5e-4), progress=False)  # fmt: skip
    dense_acc = bs.evaluate(model, data)["accuracy"]
    start = time.perf_counter()
    reg = bs.TrainConfig(epochs=epochs, lr=0.005, l1=args.l1, group_lasso=args.group_lasso)
    bs.fit(model, data, reg, progress=False)
    reg_acc = bs.evaluate(model, data)["accuracy"]
    norms = model.fc1.weight.detach().norm(dim=1)
    dead = int((norms < 1e-3 * norms.max()).sum())
    say(f"dense {100 * dense_acc:.2f}%, regularised {100 * reg_acc:.2f}%, fc1 dead units {dead}")
    if dead:
        config = bs.PruneConfig(granularity="neuron", criterion="l2", amount=dead / 500,
                                layers=("fc1",))  # fmt: skip
        bs.prune(model, config, data, progress=False)
    shrunk = shrink_model(model)
    units = shrunk.units.get("fc1", [500, 500])[0]
    fc_now = 800 * units + units * 10
    amount = max(0.0, 1 - args.fc_kept * FC_WEIGHTS / fc_now)
    prune = bs.PruneConfig(
        criterion="magnitude", amount=amount, layers=("fc1", "fc2"), schedule="iterative",
        rounds=1 if args.quick else 4, finetune_epochs=1 if args.quick else 3,
        finetune_lr=0.005, finetune_schedule="cosine",
        final_finetune_epochs=1 if args.quick else 6,
    )  # fmt: skip
    bs.prune(model, prune, data, progress=False)
    acc = bs.evaluate(model, data)["accuracy"]
    kept = fc_nonzeros(model)
    seconds = time.perf_counter() - start
    say(f"fc1 units {units}/500, FC weights kept {kept:,} = {100 * kept / FC_WEIGHTS:.2f}% "
        f"of {FC_WEIGHTS:,}; test accuracy {100 * acc:.2f}% ({seconds:.0f} s)")  # fmt: skip
    out = RESULTS / ("group_lasso-quick.json" if args.quick else "group_lasso.json")
    write_json(out, {
        "benchmark": "group_lasso", "seed": SEED, "quick": args.quick,
        "dense_accuracy": dense_acc, "dense_from": args.dense,
        "regularised": {"epochs": epochs, "l1": args.l1, "group_lasso": args.group_lasso,
                        "accuracy": reg_acc, "fc1_dead_units": dead},
        "fc1_units_kept": units, "fc_weights_kept": kept,
        "fc_kept_percent": 100 * kept / FC_WEIGHTS, "accuracy": acc,
        "prune": prune.to_dict(), "seconds": round(seconds, 1), "pan_2016": PAN,
        "environment": environment(),
    })  # fmt: skip
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
