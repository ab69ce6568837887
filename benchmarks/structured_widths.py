"""LeNet-300-100 shrunk to several widths: accuracy and dense-vs-shrunk latency per runtime.

Issue 13's target is batch-1 CPU latency >= 3x at <= 0.5 point accuracy loss. In eager
PyTorch a 784-45-100-10 model is per-call-overhead bound (1.6x, ``structured.json``); this
benchmark asks which runtime and which width reach the target. Each width is pruned from the
same cached dense run exactly as ``benchmarks/structured.py`` does (neuron-level group OBS,
4 rounds with fine-tuning, 10 final epochs, then distillation from the dense model) and
saved as a run under ``runs/bench/structured-lenet300-<widths>``; ``--only-latency`` reuses
those runs and only times. Latency: dense and shrunk on the *same* runtime (eager, TorchScript
frozen, onnxruntime ``run`` and onnxruntime with bound buffers, the C runtime through ctypes
and the same C timed by a C program), all interleaved in rounds on one thread; the fastest of
the rounds' medians is kept, ``speedup = dense / shrunk``. The ``c`` column is what a C
deployment of ``brainsurgeon export RUN --out model.c`` pays per call (no Python in the loop).
``--floor`` also times a 784-1-1-10 model with the same layers: its speedup bounds what any
shrinking can reach on that runtime (the per-call cost that does not depend on the widths).

    python benchmarks/structured_widths.py [--only-latency] [--rounds 5]

Writes benchmarks/results/structured_widths.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

import brainsurgeon as bs
from brainsurgeon._io import write_json
from brainsurgeon.structured.api import shrink_model
from brainsurgeon.utils import environment, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))
from structured import CASES, ROOT, SEED, say  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# name -> fraction of units removed per layer (fc1 has 300 units, fc2 100), pruned in this
# order: fc1 as in structured.py, then fc2 with 2 rounds. (The structured path prunes every
# listed layer to `amount`; PruneConfig.layer_sparsity is not applied to unit groups.)
WIDTHS = {
    "fc1-45": {"fc1": 0.85},
    "fc1-60": {"fc1": 0.8},
    "fc1-75": {"fc1": 0.75},
    "fc1-60-fc2-50": {"fc1": 0.8, "fc2": 0.5},
    "fc1-45-fc2-50": {"fc1": 0.85, "fc2": 0.5},
    "fc1-90": {"fc1": 0.7},
}
SECOND = {"rounds": 2, "finetune_epochs": 2, "final_finetune_epochs": 5}


def run_dir(name: str) -> Path:
    return ROOT / "runs" / "bench" / f"structured-lenet300-{name}"


def dense_run(data):
    path = ROOT / "runs" / "bench" / "structured-lenet300"
    if not (path / "config.json").exists():
        raise SystemExit(f"{path} is missing; run `python benchmarks/structured.py` first")
    return bs.load(path)


def pruned(name: str, dense, data) -> dict:
    """Prune, shrink and distill one width (cached as a run); its accuracy and units."""
    path = run_dir(name)
    if (path / "config.json").exists():
        model = bs.load(path)
        return {"model": model, **bs.load_run(path).metrics.get("widths", {})}
    case = CASES["lenet300"]
    seed_everything(SEED)
    model = copy.deepcopy(dense)
    for i, (layer, amount) in enumerate(WIDTHS[name].items()):
        prune = dict(case["prune"], layers=(layer,), amount=amount, **(SECOND if i else {}))
        bs.prune(model, bs.PruneConfig(**prune), data, progress=False)
    units = shrink_model(model).units
    before_distill = bs.evaluate(model, data)["accuracy"]
    d = bs.DistillConfig(**case["distill"], transfer="train", shift=0, noise=0.0)
    bs.distill(dense, model, d, data, progress=False)
    info = {
        "units": units,
        "accuracy_before_distill": before_distill,
        "accuracy": bs.evaluate(model, data)["accuracy"],
    }
    bs.save(
        model,
        path,
        config={"data": data.spec, "normalization": data.normalization},
        metrics={"widths": info},
    )
    return {"model": model, **info}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only-latency", action="store_true", help="reuse the cached runs")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--widths", nargs="*", default=list(WIDTHS), choices=list(WIDTHS))
    ap.add_argument(
        "--floor", action="store_true", help="also time a 784-1-1-10 model: the per-call floor"
    )
    args = ap.parse_args(argv)
    from structured_latency import latency_table

    torch.set_num_threads(1)
    data = bs.data.load_data("mnist", seed=SEED, progress=False)
    dense = dense_run(data)
    dense_acc = bs.evaluate(dense, data)["accuracy"]
    rows = []
    for name in args.widths:
        if args.only_latency and not (run_dir(name) / "config.json").exists():
            say(f"{name}: no cached run, skipped (run without --only-latency)")
            continue
        info = pruned(name, dense, data)
        model = info.pop("model")
        loss = 100 * (dense_acc - info["accuracy"])
        lat = latency_table(dense, model, data.input_shape, rounds=args.rounds)
        row = {"widths": name, **info, "accuracy_loss_points": round(loss, 2), "latency": lat}
        rows.append(row)
        say(
            f"{name}: acc {100 * info['accuracy']:.2f}% ({loss:+.2f} pt), b1 speedups "
            + ", ".join(
                f"{k} {v['speedup_b1']:.2f}x (min {v['speedup_min_b1']:.2f}x, paired "
                f"{v['speedup_paired_b1']:.2f}x)"
                for k, v in lat["runtimes"].items()
            )
        )
    floor = None
    if args.floor:  # the narrowest model with the same layers: what no shrinking goes below
        small = bs.build_model("mlp:784-1-1-10", data.input_shape, data.num_classes)
        lat = latency_table(dense, small, data.input_shape, rounds=args.rounds)
        floor = {"widths": "784-1-1-10 (per-call floor)", "latency": lat}
        say(
            "floor: the largest b1 speedup any shrinking can give: "
            + ", ".join(
                f"{k} {v['speedup_b1']:.2f}x (min {v['speedup_min_b1']:.2f}x, paired "
                f"{v['speedup_paired_b1']:.2f}x)"
                for k, v in lat["runtimes"].items()
            )
        )
    out = {
        "benchmark": "structured_widths",
        "seed": SEED,
        "threads": 1,
        "dense_accuracy": dense_acc,
        "target": CASES["lenet300"]["target"],
        "rows": rows,
        "floor": floor,
        "loadavg": os.getloadavg(),
        "note": "dense and shrunk timed on the same runtime, interleaved in rounds on one "
        "thread of a 2-core machine with nothing else running; fastest of the rounds' medians; "
        "latencies in ms",
        "environment": environment(),
    }
    write_json(RESULTS / "structured_widths.json", out)
    say(f"wrote {RESULTS / 'structured_widths.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
