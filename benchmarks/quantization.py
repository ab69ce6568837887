"""Quantization and weight sharing on LeNet-300-100 / MNIST: test accuracy and bits per weight.

    python benchmarks/quantization.py [--quick] [--finetune-epochs 3] [--threads N]

Writes benchmarks/results/quantization.json (quantization-quick.json with --quick). The float
model is trained once (SGD lr 0.05, momentum 0.9, cosine, 20 epochs, seed 0) and cached as a
run directory (safetensors + JSON) in benchmarks/results/lenet300-mnist-seed0. Rows: uniform
8/4/2-bit, k-means 5/4/3/2-bit x {linear, random, density} init x {no, centroid} fine-tuning,
binary, ternary (with and without QAT), product, residual, gptq 4/3/2-bit against
round-to-nearest on the same per-channel grid. Targets are checked at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from brainsurgeon import runs
from brainsurgeon._io import write_json
from brainsurgeon.data import load_data
from brainsurgeon.models import build_model
from brainsurgeon.quantization import plan, quant_config, quantize
from brainsurgeon.training import TrainConfig, evaluate, fit
from brainsurgeon.utils import environment, seed_everything

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CACHE = RESULTS / "lenet300-mnist-seed0"
SEED = 0


def trained_lenet300(data, *, epochs: int = 20, seed: int = SEED):
    """The float LeNet-300-100, trained once and cached as a run directory."""
    if (CACHE / runs.CONFIG_FILE).exists():
        return runs.load_run(CACHE).model
    seed_everything(seed)
    model = build_model("lenet300", data.input_shape, data.num_classes)
    config = TrainConfig(epochs=epochs, lr=0.05, momentum=0.9, schedule="cosine", seed=seed)
    fit(model, data, config, progress=False)
    acc = evaluate(model, data)["accuracy"]
    cfg = {
        "data": data.spec,
        "normalization": data.normalization,
        "seed": seed,
        "training": config.to_dict(),
        "history": [{"step": "train"}],
    }
    runs.save(model, CACHE, config=cfg, metrics={"test_accuracy": acc}, force=True)
    return model


def experiments(quick: bool, ft: int) -> list[tuple[str, dict]]:
    """``(label, quant_config kwargs)`` for every row; rows behind the targets come first."""
    rows = [(f"uniform-{b}", {"method": "uniform", "bits": b}) for b in (8, 4, 2)]
    for bits in (4, 3, 2):  # round-to-nearest on the same per-channel grid as gptq
        rows.append((f"rtn-{bits}", {"method": "uniform", "bits": bits}))
        rows.append((f"gptq-{bits}", {"method": "gptq", "bits": bits, "samples": 2048}))
    for init in ["linear"] if quick else ["linear", "density", "random"]:
        for bits in (5, 4, 3, 2):
            base = {"method": "kmeans", "bits": bits, "init": init}
            rows.append((f"kmeans-{bits}-{init}", base))
            rows.append((f"kmeans-{bits}-{init}+ft", {**base, "finetune_epochs": ft}))
        if init == "linear":
            rows += _others(quick, ft)
    return rows


def _others(quick: bool, ft: int) -> list[tuple[str, dict]]:
    rows = [
        ("binary", {"method": "binary"}),
        ("binary+qat", {"method": "binary", "finetune_epochs": ft}),
        ("ternary", {"method": "ternary"}),
        ("ternary+qat", {"method": "ternary", "finetune_epochs": ft}),
        ("uniform-2+qat", {"method": "uniform", "bits": 2, "finetune_epochs": ft}),
    ]
    pq = {"method": "product", "bits": 8, "block_width": 4, "per_layer_bits": {"fc2": 6, "fc3": 3}}
    rows += [("product-k256-d4", pq), ("product-k256-d4+ft", {**pq, "finetune_epochs": ft})]
    rq = {"method": "residual", "bits": 2, "stages": 2, "block_width": 1}
    rows += [("residual-k4-t2-d1", rq), ("residual-k4-t2-d1+ft", {**rq, "finetune_epochs": ft})]
    if not quick:
        pq2 = {"method": "product", "bits": 6, "block_width": 2, "per_layer_bits": {"fc3": 3}}
        rq2 = {
            "method": "residual",
            "bits": 8,
            "stages": 2,
            "block_width": 4,
            "per_layer_bits": {"fc3": 4},
        }
        rows += [("product-k64-d2", pq2), ("residual-k256-t2-d4", rq2)]
    # fewer centroids per codebook: the codebooks stop dominating the storage
    for bits in (4, 2):
        small = {"method": "product", "bits": bits, "block_width": 4, "per_layer_bits": {"fc3": 3}}
        rows.append((f"product-k{2**bits}-d4", small))
        rows.append((f"product-k{2**bits}-d4+ft", {**small, "finetune_epochs": ft}))
    return rows


def run_one(model, data, label: str, kwargs: dict, base_acc: float, lr: float) -> dict:
    m = copy.deepcopy(model)
    config = quant_config(seed=SEED, finetune_lr=lr, **kwargs)
    start = time.perf_counter()
    result = quantize(m, config, data)
    seconds = time.perf_counter() - start
    acc = evaluate(m, data)["accuracy"]
    total = result.storage["total"]
    row = {
        "label": label,
        "config": config.to_dict(),
        "test_accuracy": acc,
        "drop_points": round(100 * (base_acc - acc), 3),
        "bits_per_weight": total["bits_per_weight"],
        "ratio": total["ratio"],
        "model_ratio": result.storage["model_ratio"],
        "seconds": round(seconds, 2),
    }
    print(
        f"{label:<24} acc {100 * acc:6.2f}%  drop {row['drop_points']:6.2f}  "
        f"bits/w {total['bits_per_weight']:6.3f}  ratio {total['ratio']:6.2f}  "
        f"({seconds:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    return row


def targets(rows: dict[str, dict]) -> dict[str, dict]:
    def drop(label):
        return rows[label]["drop_points"]

    out = {
        "uniform-8 loses <= 0.1 point": (drop("uniform-8"), drop("uniform-8") <= 0.1),
        "kmeans-5 (linear) loses <= 0.1 point": (
            drop("kmeans-5-linear"),
            drop("kmeans-5-linear") <= 0.1,
        ),
        "kmeans-2 (linear) after fine-tuning loses <= 1 point": (
            drop("kmeans-2-linear+ft"),
            drop("kmeans-2-linear+ft") <= 1.0,
        ),
        "gptq-3 beats round-to-nearest 3-bit": (
            [rows["gptq-3"]["test_accuracy"], rows["rtn-3"]["test_accuracy"]],
            rows["gptq-3"]["test_accuracy"] > rows["rtn-3"]["test_accuracy"],
        ),
    }
    return {k: {"value": v, "met": bool(ok)} for k, (v, ok) in out.items()}


def _done_rows(path: Path, head: dict) -> dict[str, dict]:
    """Rows of an earlier run with the same settings (for --resume)."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    if any(old.get(k) != v for k, v in head.items()):
        return {}
    return {r["label"]: r for r in old.get("rows", [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rows, 1 fine-tune epoch")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=None, help="default: the method's")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="keep rows of an unfinished run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ft = 1 if args.quick else args.finetune_epochs
    data = load_data("mnist", progress=False)
    model = trained_lenet300(data)
    base = evaluate(model, data)
    print(f"float LeNet-300-100: {100 * base['accuracy']:.2f}%", file=sys.stderr)
    name = "quantization-quick.json" if args.quick else "quantization.json"
    head = {
        "benchmark": "quantization",
        "model": "lenet300",
        "data": "mnist",
        "seed": SEED,
        "quick": args.quick,
        "finetune_epochs": ft,
        "finetune_lr": args.finetune_lr,
        "float_test_accuracy": base["accuracy"],
    }
    todo = experiments(args.quick, ft)
    for _, kwargs in todo:  # every option checked before the long run starts
        plan(model, quant_config(**kwargs))
    rows = _done_rows(RESULTS / name, head) if args.resume else {}
    for label, kwargs in todo:
        if label in rows:
            continue
        rows[label] = run_one(model, data, label, kwargs, base["accuracy"], args.finetune_lr)
        # written after every row, so an interrupted run keeps what it measured
        write_json(
            RESULTS / name,
            {**head, "complete": False, "rows": list(rows.values()), "environment": environment()},
        )
    result = {
        **head,
        "complete": True,
        "rows": list(rows.values()),
        "targets": targets(rows),
        "environment": environment(),
    }
    write_json(RESULTS / name, result)
    for k, v in result["targets"].items():
        print(f"{'MET ' if v['met'] else 'MISS'} {k}: {v['value']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
