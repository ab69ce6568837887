"""Neuron merging vs plain removal on LeNet-300-100 / MNIST, no fine-tuning.

Both hidden layers (fc1: 300, fc2: 100 units) lose the same fraction of their units by
(a) plain removal of the smallest-L2 rows, (b) Kim et al.'s scaling-matrix merge (NeurIPS 2020)
and (c) Srinivas & Babu's data-free pair merge (BMVC 2015). Accuracy is on the 10,000 test
images. Kim et al. report LeNet-300-100 on FashionMNIST (a harder set, so compare the gaps, not
the levels). Trained models are cached under runs/bench/merge-lenet300-s{seed}.

    python benchmarks/merging.py            # ~1 min to train each seed (1 thread), 2 s to compress
    python benchmarks/merging.py --seeds 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import brainsurgeon as bs
from brainsurgeon._io import write_json
from brainsurgeon.structured.merging import merge, prune_units
from brainsurgeon.utils import environment, seed_everything

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "merging.json"
AMOUNTS = (0.5, 0.6, 0.7, 0.8)
THRESHOLDS = (0.0, 0.2, 0.45, 0.7)  # Kim's cosine threshold; 0.45 is the paper's LeNet value
# Kim et al. 2020, Table 1: LeNet-300-100 on FashionMNIST, no fine-tuning (baseline 89.80%).
PAPER = {
    0.5: {"prune": 88.40, "kim": 88.69},
    0.6: {"prune": 85.17, "kim": 86.92},
    0.7: {"prune": 71.26, "kim": 82.75},
    0.8: {"prune": 66.76, "kim": 80.02},
}


def trained(data, seed: int, epochs: int):
    """LeNet-300-100 trained once per seed (SGD, lr 0.05), cached as a run directory."""
    path = ROOT / "runs" / "bench" / f"merge-lenet300-s{seed}"
    if (path / "model.safetensors").exists():
        try:
            return bs.load(path)
        except Exception as exc:  # noqa: BLE001 - a stale cache is retrained
            print(f"retraining ({exc})", file=sys.stderr)
    seed_everything(seed)
    model = bs.build_model("lenet300", data.input_shape, data.num_classes)
    bs.fit(model, data, bs.TrainConfig(epochs=epochs, lr=0.05, seed=seed), progress=False)
    bs.save(model, path, config={"data": data.spec}, force=True)
    return model


def accuracy(model, data) -> float:
    return 100.0 * bs.evaluate(model, data)["accuracy"]


def run_seed(data, seed: int, epochs: int) -> dict:
    model = trained(data, seed, epochs)
    row = {"seed": seed, "dense": accuracy(model, data), "amounts": {}}
    for amount in AMOUNTS:
        t0 = time.perf_counter()
        pruned = prune_units(model, amount).model
        kim = merge(model, amount, method="kim")
        free = merge(model, amount, method="data-free").model
        row["amounts"][str(amount)] = {
            "prune": accuracy(pruned, data),
            "kim": accuracy(kim.model, data),
            "data_free": accuracy(free, data),
            "kim_units_merged": kim.merged,
            "kim_by_threshold": {
                str(t): accuracy(merge(model, amount, threshold=t).model, data) for t in THRESHOLDS
            },
            "params": sum(p.numel() for p in kim.model.parameters()),
            "seconds": time.perf_counter() - t0,
        }
    return row


def wins(rows: list[dict], amount: float, key: str) -> str:
    """How many trained models ``key`` beats plain removal on, e.g. ``5/5``."""
    cells = [r["amounts"][str(amount)] for r in rows]
    return f"{sum(c[key] > c['prune'] for c in cells)}/{len(cells)}"


def table(rows: list[dict]) -> str:
    head = f"{'removed':>8} | {'prune':>13} {'Kim merge':>13} {'data-free':>13} | "
    head += f"{'Kim wins':>8} {'DF wins':>7} | {'paper prune':>11} {'paper merge':>11}"
    lines = [head, "-" * len(head)]
    for amount in AMOUNTS:
        cells = []
        for key in ("prune", "kim", "data_free"):
            vals = torch.tensor([r["amounts"][str(amount)][key] for r in rows])
            sd = vals.std().item() if len(vals) > 1 else 0.0
            cells.append(f"{vals.mean().item():6.2f} ±{sd:5.2f}")
        p = PAPER[amount]
        lines.append(
            f"{amount:>7.0%} | {cells[0]:>13} {cells[1]:>13} {cells[2]:>13} | "
            f"{wins(rows, amount, 'kim'):>8} {wins(rows, amount, 'data_free'):>7} | "
            f"{p['prune']:>11.2f} {p['kim']:>11.2f}"
        )
    dense = torch.tensor([r["dense"] for r in rows])
    lines.append(
        f"MNIST test accuracy (%), mean ± sd over seeds {[r['seed'] for r in rows]}; dense "
        f"{dense.mean().item():.2f}%. Paper: FashionMNIST (dense 89.80%), one model."
    )
    lines.append("Kim merge by cosine threshold (mean over seeds):")
    for amount in AMOUNTS:
        vals = [
            sum(r["amounts"][str(amount)]["kim_by_threshold"][str(t)] for r in rows) / len(rows)
            for t in THRESHOLDS
        ]
        lines.append(
            f"{amount:>7.0%} | "
            + "  ".join(f"t={t}: {v:5.2f}" for t, v in zip(THRESHOLDS, vals, strict=True))
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = bs.data.load_data("mnist", progress=False)
    if args.train_only:
        for seed in args.seeds:
            t0 = time.perf_counter()
            model = trained(data, seed, args.epochs)
            print(f"seed {seed}: {accuracy(model, data):.2f}% ({time.perf_counter() - t0:.0f} s)")
        return
    rows = [run_seed(data, seed, args.epochs) for seed in args.seeds]
    print(table(rows))
    write_json(
        RESULTS,
        {
            "benchmark": "merging",
            "model": "lenet300",
            "data": "mnist",
            "epochs": args.epochs,
            "paper_fashion_mnist": PAPER,
            "rows": rows,
            "environment": environment(),
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
