"""Truncated-SVD factorization on MNIST: accuracy vs compression rate, with and without fine-tuning.

LeNet-300-100: every layer factorized by target rate (``ratio``), by retained energy and by a
global weight budget allocated by measured sensitivity (a layer an option cannot shrink stays
dense). LeNet-5: its fully connected layers by target rate: fc1 (800->500) alone, and fc1 with the
classifier fc2 (500->10).
Accuracy is on the 10,000 test images; fine-tuning uses the training split.

    python benchmarks/factorization.py            # a few minutes on 2 shared CPU cores
    python benchmarks/factorization.py --quick    # fewer settings and epochs
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from brainsurgeon._io import write_json
from brainsurgeon.data import load_data
from brainsurgeon.factorization import FactorizeConfig, factorize
from brainsurgeon.models import build_model
from brainsurgeon.training import TrainConfig, evaluate, fit
from brainsurgeon.utils import environment, seed_everything

RESULTS = Path(__file__).parent / "results" / "factorization.json"


def settings(quick: bool) -> dict:
    if quick:
        return {
            "seed": 0,
            "lenet300_epochs": 2,
            "lenet5_epochs": 1,
            "finetune_epochs": 1,
            "lenet300": [("ratio", 2.0), ("ratio", 8.0), ("energy", 0.9), ("budget", 0.1)],
            "lenet5": [("ratio", 4.0, ("fc1",))],
        }
    return {
        "seed": 0,
        "lenet300_epochs": 20,
        "lenet5_epochs": 3,
        "finetune_epochs": 2,
        "lenet300": [("ratio", r) for r in (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)]
        + [("energy", e) for e in (0.5, 0.7, 0.8, 0.9, 0.95)]
        + [("budget", b) for b in (0.05, 0.1, 0.25)],
        # fc1 alone (93% of LeNet-5's weights), then fc1 + the 10-way classifier fc2
        "lenet5": [("ratio", r, ("fc1",)) for r in (2.0, 4.0, 8.0, 16.0, 32.0)]
        + [("ratio", r, ("fc1", "fc2")) for r in (2.0, 4.0)],
    }


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


LR = {"lenet300": 0.05, "lenet5": 0.01}  # LeNet-5 diverges at 0.05 with momentum 0.9


def train(name: str, data, epochs: int, seed: int):
    seed_everything(seed)
    model = build_model(name, data.input_shape, data.num_classes)
    fit(model, data, TrainConfig(epochs=epochs, lr=LR[name], seed=seed), progress=False)
    return model


def one_setting(base, data, mode: str, value: float, layers, cfg: dict) -> dict:
    model = copy.deepcopy(base)
    start = time.perf_counter()
    result = factorize(
        model, FactorizeConfig(layers=layers, seed=cfg["seed"], **{mode: value}), data
    )
    seconds = round(time.perf_counter() - start, 2)
    before, after = n_params(base), n_params(model)
    no_ft = evaluate(model, data)
    epochs = cfg["finetune_epochs"] if base.__class__.__name__ == "MLP" else 1
    ft_cfg = TrainConfig(epochs=epochs, lr=0.01, seed=cfg["seed"])
    ft_seconds = time.perf_counter()
    fit(model, data, ft_cfg, progress=False)
    ft = evaluate(model, data)
    summary = result.to_dict()
    row = {
        "mode": mode,
        "value": value,
        "factorized": list(layers) if layers else "all",
        "layers": [
            {k: p[k] for k in ("name", "m", "n", "rank", "energy", "rate")}
            for p in summary["layers"]
        ],
        "factored_weights_before": summary["weights_before"],
        "factored_weights_after": summary["weights_after"],
        "layer_weight_ratio": summary["weight_ratio"],
        "params_before": before,
        "params_after": after,
        "model_compression": before / after,
        "accuracy": no_ft["accuracy"],
        "errors": no_ft["errors"],
        "accuracy_finetuned": ft["accuracy"],
        "errors_finetuned": ft["errors"],
        "finetune_epochs": epochs,
        "factorize_seconds": seconds,
        "finetune_seconds": round(time.perf_counter() - ft_seconds, 1),
    }
    ranks = ",".join(f"{p['name']}={p['rank'] or '-'}" for p in row["layers"])
    print(
        f"{mode}={value}: {ranks} x{row['model_compression']:.2f} params, acc "
        f"{row['accuracy']:.4f} -> ft {row['accuracy_finetuned']:.4f}",
        file=sys.stderr,
        flush=True,
    )
    return row


def model_block(name: str, data, epochs: int, grid, layers, cfg: dict, blocks, flush) -> None:
    """Train ``name`` once, then factorize copies of it; ``flush()`` after every row."""
    start = time.perf_counter()
    base = train(name, data, epochs, cfg["seed"])
    train_seconds = round(time.perf_counter() - start, 1)
    base_eval = evaluate(base, data)
    print(
        f"{name}: {base_eval['accuracy']:.4f} after {epochs} epochs ({train_seconds}s)",
        file=sys.stderr,
        flush=True,
    )
    block = {
        "model": name,
        "epochs": epochs,
        "train_lr": LR[name],
        "train_seconds": train_seconds,
        "params": n_params(base),
        "accuracy": base_eval["accuracy"],
        "errors": base_eval["errors"],
        "layers": list(layers) if layers else "all",
        "rows": [],
    }
    blocks.append(block)
    for mode, value, *only in grid:
        row = one_setting(base, data, mode, value, only[0] if only else layers, cfg)
        block["rows"].append(row)
        flush()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer settings and epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--out",
        help=f"result JSON (default {RESULTS.name}, or factorization-quick.json with --quick)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or str(RESULTS.with_name("factorization-quick.json") if args.quick else RESULTS)
    cfg = settings(args.quick)
    data = load_data("mnist", progress=False)
    start = time.perf_counter()
    blocks: list[dict] = []

    def flush(complete: bool = False) -> None:
        """Rewrite the JSON so an interrupted run still leaves what it measured."""
        write_json(
            out,
            {
                "benchmark": "factorization",
                "quick": args.quick,
                "complete": complete,
                "seed": cfg["seed"],
                "settings": {k: v for k, v in cfg.items() if k not in ("lenet300", "lenet5")},
                "finetune": {
                    "epochs": {"lenet300": cfg["finetune_epochs"], "lenet5": 1},
                    "lr": 0.01,
                    "schedule": "cosine",
                },
                "data": data.sizes(),
                "models": blocks,
                "total_seconds": round(time.perf_counter() - start, 1),
                "environment": environment(),
            },
        )

    model_block("lenet300", data, cfg["lenet300_epochs"], cfg["lenet300"], None, cfg, blocks, flush)
    model_block("lenet5", data, cfg["lenet5_epochs"], cfg["lenet5"], None, cfg, blocks, flush)
    flush(complete=True)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
