"""Structured pruning + surgery: fewer parameters, fewer FLOPs, measured speed.

(a) LeNet-300-100 on MNIST: hidden neurons removed (``--granularity neuron``) in rounds with
    fine-tuning, then ``shrink``; target (issue 13): batch-1 CPU latency >= 3x faster at
    <= 0.5 point accuracy loss.
(b) resnet8 (BatchNorm, residual additions) on the embedded digits: conv channels removed
    (``--granularity channel``) with fine-tuning, then ``shrink``; target: >= 2x fewer FLOPs at
    <= 1 point loss.

Latency: ``torch.utils.benchmark`` medians, dense and shrunk measured side by side in one
process (1 thread, both baked for inference), batch 1 and 64, on three runtimes: eager,
TorchScript frozen, onnxruntime (``to_inference(m, "onnx")``; columns ``*_onnx_*``) and the
C runtime (``to_inference(m, "native")``, ``*_native_*``; the pure-C timing without Python
is in ``structured_widths.py``).

    python benchmarks/structured.py [--case lenet300|resnet8|all] [--quick]
    python benchmarks/structured.py --only-latency [--rounds 5]   # re-time cached runs only

Writes benchmarks/results/structured.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

import brainsurgeon as bs
from brainsurgeon._io import write_json
from brainsurgeon.metrics import summarize
from brainsurgeon.runtime import to_inference
from brainsurgeon.structured.api import shrink_model
from brainsurgeon.utils import environment, seed_everything

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
SEED = 0
CASES = {
    "lenet300": {
        "data": "mnist",
        "model": "lenet300",
        "train": {"epochs": 20, "lr": 0.05, "schedule": "cosine", "weight_decay": 1e-4},
        "prune": {
            "granularity": "neuron",
            "criterion": "group-obs",
            "amount": 0.85,
            "layers": ("fc1",),  # fc1 holds 88% of the FLOPs; fc2 stays whole
            "scheme": "per-layer",
            "schedule": "iterative",
            "rounds": 4,
            "finetune_epochs": 3,
            "finetune_lr": 0.01,
            "finetune_schedule": "cosine",
            "final_finetune_epochs": 10,
        },
        "distill": {"epochs": 15, "lr": 0.01, "temperature": 2.0, "alpha": 0.9},
        "target": {"latency_b1_speedup": 3.0, "max_loss_points": 0.5},
    },
    "resnet8": {
        "data": "digits",
        "model": "resnet8",
        "train": {"epochs": 40, "lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4},
        "prune": {
            "granularity": "channel",
            "criterion": "l2",
            "amount": 0.4,
            "scheme": "per-layer",
            "schedule": "iterative",
            "rounds": 2,
            "finetune_epochs": 10,
            "finetune_lr": 0.01,
            "finetune_schedule": "cosine",
        },
        "target": {"flop_reduction": 2.0, "max_loss_points": 1.0},
    },
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def trained(case: dict, data, quick: bool):
    """The dense model, cached as a run under runs/bench/structured-<model>."""
    path = ROOT / "runs" / "bench" / f"structured-{case['model']}{'-quick' if quick else ''}"
    if (path / "config.json").exists():
        return bs.load(path)
    seed_everything(SEED)
    model = bs.build_model(case["model"], data.input_shape, data.num_classes)
    train = dict(case["train"], epochs=2) if quick else case["train"]
    bs.fit(model, data, bs.TrainConfig(**train), progress=False)
    bs.save(model, path, config={"data": data.spec, "normalization": data.normalization})
    return model


def measure(model, data) -> dict:
    shape = data.input_shape
    totals = summarize(model, shape)["totals"]
    return {
        "accuracy": bs.evaluate(model, data)["accuracy"],
        "params": sum(p.numel() for p in model.parameters()),
        "flops": totals["flops"],
    }


def frozen(model, shape):
    """``torch.jit.trace`` + ``freeze``: the same model with Python's per-call overhead gone
    (what a deployment runtime such as TorchScript or ONNX Runtime pays instead)."""
    x = torch.zeros(1, *shape)
    with torch.inference_mode():
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))


def timed(model, shape) -> dict:
    """Median ms at batch 1 and 64 (``torch.utils.benchmark``, 1 thread)."""
    from torch.utils import benchmark

    out = {}
    for batch in (1, 64):
        x = torch.randn(batch, *shape)
        model(x)  # warm-up
        timer = benchmark.Timer("m(x)", globals={"m": model, "x": x}, num_threads=1)
        out[f"batch_{batch}_ms"] = timer.blocked_autorange(min_run_time=0.3).median * 1e3
    return out


def latency_pair(dense, small, shape, rounds: int = 3) -> dict:
    """Both models' medians, eager, frozen and onnxruntime (``to_inference(m, "onnx")``, when
    onnxruntime is installed), interleaved ``rounds`` times; the fastest median kept."""
    a, b = to_inference(dense), to_inference(small)
    models = {"dense": a, "shrunk": b, "dense_frozen": frozen(a, shape)}
    models["shrunk_frozen"] = frozen(b, shape)
    suffixes = ["", "_frozen"]
    try:
        models["dense_onnx"] = to_inference(a, "onnx")
        models["shrunk_onnx"] = to_inference(b, "onnx")
        suffixes.append("_onnx")
    except Exception as exc:  # onnx / onnxruntime missing: the column is left out
        say(f"onnx runtime skipped: {exc}")
    try:  # the model compiled to C, called through ctypes
        models["dense_native"] = to_inference(a, "native")
        models["shrunk_native"] = to_inference(b, "native")
        suffixes.append("_native")
    except Exception as exc:  # no C compiler, or a layer the C runtime refuses
        say(f"native runtime skipped: {exc}")
    runs = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, m in models.items():
                runs[name].append(timed(m, shape))
    out = {}
    for name, rs in runs.items():
        for batch in (1, 64):
            out[f"{name}_b{batch}_ms"] = min(r[f"batch_{batch}_ms"] for r in rs)
    for batch in (1, 64):
        for sfx in suffixes:
            ratio = out[f"dense{sfx}_b{batch}_ms"] / out[f"shrunk{sfx}_b{batch}_ms"]
            out[f"speedup{sfx}_b{batch}"] = ratio
    out["loadavg"] = os.getloadavg()
    return out


def one_case(name: str, quick: bool) -> dict:
    case = CASES[name]
    data = bs.data.load_data(case["data"], seed=SEED, progress=False)
    dense = trained(case, data, quick)
    before = measure(dense, data)
    model = copy.deepcopy(dense)
    prune = dict(case["prune"])
    if quick:
        prune.update(rounds=1, finetune_epochs=1, final_finetune_epochs=None)
    start = time.perf_counter()
    bs.prune(model, bs.PruneConfig(**prune), data, progress=False)
    shrunk = shrink_model(model)
    distilled = None
    if case.get("distill") and not quick:  # recover accuracy from the dense model
        pruned_acc = bs.evaluate(model, data)["accuracy"]
        d = bs.DistillConfig(**case["distill"], transfer="train", shift=0, noise=0.0)
        bs.distill(dense, model, d, data, progress=False)
        distilled = {"options": case["distill"], "accuracy_before": pruned_acc}
    seconds = time.perf_counter() - start
    after = measure(model, data)
    lat = latency_pair(dense, model, data.input_shape)
    loss = 100 * (before["accuracy"] - after["accuracy"])
    row = {
        "case": name,
        "data": case["data"],
        "prune": prune,
        "before": before,
        "after": after,
        "units": shrunk.units,
        "distilled_from_dense": distilled,
        "accuracy_loss_points": round(loss, 2),
        "param_reduction": before["params"] / after["params"],
        "flop_reduction": before["flops"] / after["flops"],
        "latency": lat,
        "seconds": round(seconds, 1),
        "target": case["target"],
    }
    t = case["target"]
    ok = loss <= t["max_loss_points"]
    best_b1 = max(v for k, v in lat.items() if k.startswith("speedup") and k.endswith("_b1"))
    ok &= best_b1 >= t.get("latency_b1_speedup", 0)
    ok &= row["flop_reduction"] >= t.get("flop_reduction", 0)
    row["meets_target"] = bool(ok)
    say(
        f"{name}: acc {100 * before['accuracy']:.2f} -> {100 * after['accuracy']:.2f}% "
        f"({loss:+.2f} pt loss), params {row['param_reduction']:.2f}x, FLOPs "
        f"{row['flop_reduction']:.2f}x, latency b1 {lat['speedup_b1']:.2f}x (frozen "
        f"{lat['speedup_frozen_b1']:.2f}x), b64 {lat['speedup_b64']:.2f}x (frozen "
        f"{lat['speedup_frozen_b64']:.2f}x), onnx b1 {lat.get('speedup_onnx_b1', 0):.2f}x; "
        f"units {shrunk.units}"
    )
    bs.save(model, shrunk_dir(name, quick), config={"data": data.spec}, force=True)
    return row


def shrunk_dir(name: str, quick: bool) -> Path:
    return ROOT / "runs" / "bench" / f"structured-{name}-shrunk{'-quick' if quick else ''}"


def relatency(name: str, row: dict, quick: bool, rounds: int) -> dict:
    """``--only-latency``: re-time the cached dense and shrunk models of a recorded row."""
    case = CASES[name]
    dense_path = ROOT / "runs" / "bench" / f"structured-{case['model']}{'-quick' if quick else ''}"
    if not (shrunk_dir(name, quick) / "config.json").exists():
        say(f"{name}: no cached shrunk run, row kept as recorded (run without --only-latency)")
        return row
    dense, small = bs.load(dense_path), bs.load(shrunk_dir(name, quick))
    shape = tuple(bs.load_run(dense_path).config["model"]["input_shape"])
    row = dict(row, latency=latency_pair(dense, small, shape, rounds))
    lat, t = row["latency"], case["target"]
    best_b1 = max(v for k, v in lat.items() if k.startswith("speedup") and k.endswith("_b1"))
    ok = row["accuracy_loss_points"] <= t["max_loss_points"]
    ok &= best_b1 >= t.get("latency_b1_speedup", 0)
    row["meets_target"] = bool(ok & (row["flop_reduction"] >= t.get("flop_reduction", 0)))
    say(f"{name}: " + ", ".join(f"{k} {v:.2f}x" for k, v in lat.items() if k.startswith("sp")))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="all", choices=["all", *CASES])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--only-latency",
        action="store_true",
        help="re-time the cached dense and shrunk runs of the recorded rows (no training)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (--only-latency)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = list(CASES) if args.case == "all" else [args.case]
    out = RESULTS / ("structured-quick.json" if args.quick else "structured.json")
    previous = {}
    if out.exists() and (args.case != "all" or args.only_latency):
        previous = {r["case"]: r for r in json.loads(out.read_text()).get("results", [])}
    if args.only_latency:
        names = [n for n in names if n in previous]
        rows = [relatency(n, previous[n], args.quick, args.rounds) for n in names]
    else:
        rows = [one_case(n, args.quick) for n in names]
    previous.update({r["case"]: r for r in rows})
    write_json(
        out,
        {
            "benchmark": "structured",
            "seed": SEED,
            "threads": 1,
            "note": "latency: dense and shrunk interleaved in one process on a shared 2-core "
            "machine; the fastest of 3 medians each",
            "results": list(previous.values()),
            "environment": environment(),
        },
    )
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
