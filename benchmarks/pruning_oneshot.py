"""One-shot pruning without fine-tuning: LeNet-300-100 on MNIST, every criterion, global
sparsity 50/70/80/90/95%; test accuracy (random over 3 seeds).

    python benchmarks/pruning_oneshot.py [--quick] [--criteria obd,obs] [--threads 1]

Writes benchmarks/results/pruning_oneshot.json. The dense model is trained once (SGD 0.05,
momentum 0.9, cosine, 20 epochs) and cached in runs/bench/lenet300-mnist. Criteria without a
weight update share one scoring per sparsity sweep (scores do not depend on the amount);
OBS (compensation) and layer-wise OBS (selection inside the solve) run prune() per amount.
``true-damage`` is left out: one forward pass per weight is ~266k passes over the data.
OBS runs with its default options (GGN curvature, damping 0.1 x mean diag, WoodFisher
blocks chosen from the 1 GiB ``max_memory``: recorded as ``block_size_chosen``), plus one
row ``obs[fisher-abs1e-7-b512]`` with the options the first version of this benchmark needed
(empirical Fisher, absolute damping 1e-7, blocks of 512) for a same-model comparison.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from brainsurgeon import runs
from brainsurgeon._io import write_json
from brainsurgeon.curvature.inverse import choose_block_size
from brainsurgeon.data import load_data
from brainsurgeon.models import build_model
from brainsurgeon.pruning import CRITERIA, PruneConfig, make_criterion, prune, set_mask
from brainsurgeon.pruning.criteria.base import CompensatingCriterion, Solver
from brainsurgeon.pruning.selection import select_global
from brainsurgeon.pruning.targets import eligible_targets
from brainsurgeon.training import TrainConfig, evaluate, fit
from brainsurgeon.utils import environment, seed_everything

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CACHE = ROOT.parent / "runs" / "bench" / "lenet300-mnist"
AMOUNTS = [0.5, 0.7, 0.8, 0.9, 0.95]
# Options per criterion for a 266k-weight net: the exact inverse does not fit, so OBS uses
# WoodFisher blocks; dropout-regression cannot fit 266k coefficients by least squares.
OPTIONS = {
    "obs": {},  # defaults: they must beat magnitude (issue 11)
    "dropout-regression": {"masks": 2000, "keep": 0.95},
}
# Extra rows: label -> (criterion, options), run when the criterion is.
VARIANTS = {
    "obs[fisher-abs1e-7-b512]": (
        "obs",
        {"hessian": "fisher", "damp": 0.0, "abs_damp": 1e-7, "block_size": 512},
    ),
}
SKIP = {"true-damage": "one forward pass per weight: ~266k passes over the data"}


def trained_lenet300(data, *, epochs: int = 20, seed: int = 0):
    """The dense LeNet-300-100 (cached as a run directory)."""
    if (CACHE / runs.CONFIG_FILE).exists():
        return runs.load_run(CACHE).model
    seed_everything(seed)
    model = build_model("lenet300", data.input_shape, data.num_classes)
    config = TrainConfig(epochs=epochs, lr=0.05, momentum=0.9, schedule="cosine", seed=seed)
    fit(model, data, config, progress=False)
    runs.save(
        model,
        CACHE,
        config={
            "data": data.spec,
            "normalization": data.normalization,
            "seed": seed,
            "training": config.to_dict(),
            "history": [{"step": "train"}],
        },
        force=True,
    )
    return model


def sweep_scores(model, data, name, options, amounts, seed, samples):
    """Score once, then select globally at each amount on a copy."""
    start = time.perf_counter()
    crit = make_criterion(name, **options)
    from brainsurgeon.pruning import saliency

    scores = saliency(model, name, data, samples=samples, seed=seed, device="cpu", **options)
    seconds = time.perf_counter() - start
    del crit
    out = {}
    for amount in amounts:
        pruned = copy.deepcopy(model)
        targets = eligible_targets(pruned)
        keep = select_global(scores, amount)
        for key, (module, tensor_name) in targets.items():
            set_mask(module, tensor_name, keep[key])
        out[amount] = evaluate(pruned, data)["accuracy"]
    return out, seconds


def sweep_prune(model, data, name, options, amounts, seed, samples, obs_steps=1):
    out, seconds = {}, 0.0
    for amount in amounts:
        pruned = copy.deepcopy(model)
        start = time.perf_counter()
        config = PruneConfig(
            criterion=name,
            criterion_options=options,
            amount=amount,
            samples=samples,
            seed=seed,
            obs_steps=obs_steps,
        )
        result = prune(pruned, config, data, device="cpu", progress=False)
        seconds += time.perf_counter() - start
        out[amount] = result.rounds[-1]["accuracy"]
    return out, seconds


def run_criterion(model, data, name, amounts, samples, seeds, options=None):
    options = OPTIONS.get(name, {}) if options is None else options
    crit = make_criterion(name, **options)
    per_seed = []
    for seed in seeds:
        if isinstance(crit, Solver | CompensatingCriterion):  # they move weights: full prune
            acc, seconds = sweep_prune(model, data, name, options, amounts, seed, samples)
        else:
            acc, seconds = sweep_scores(model, data, name, options, amounts, seed, samples)
        per_seed.append({"seed": seed, "accuracy": acc, "seconds": round(seconds, 2)})
    mean = {a: sum(s["accuracy"][a] for s in per_seed) / len(per_seed) for a in amounts}
    return {
        "criterion": name,
        "options": options,
        "runs": per_seed,
        "accuracy": {str(a): mean[a] for a in amounts},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 amounts, 300 samples")
    parser.add_argument(
        "--criteria", default=None, help="comma list (default: all); merges into the file"
    )
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--obs-steps", type=int, default=4, help="extra OBS run with obs_steps (1: none)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data("mnist", progress=False)
    model = trained_lenet300(data)
    dense = evaluate(model, data)["accuracy"]
    amounts = [0.5, 0.9, 0.95] if args.quick else AMOUNTS
    samples = 300 if args.quick else args.samples
    names = args.criteria.split(",") if args.criteria else CRITERIA.names()
    path = RESULTS / ("pruning_oneshot_quick.json" if args.quick else "pruning_oneshot.json")
    rows = previous_rows(path, names) if args.criteria else []
    header = {
        "benchmark": "pruning_oneshot",
        "model": "lenet300",
        "data": "mnist",
        "dense_accuracy": dense,
        "amounts": amounts,
        "samples": samples,
        "scheme": "global (layer-wise OBS: every layer to the amount)",
        "quick": args.quick,
        "seeds": {"random": [0, 1, 2], "others": [0]},
    }
    jobs = [(name, name, None) for name in names]
    jobs += [(label, c, o) for label, (c, o) in VARIANTS.items() if c in names and not args.quick]
    for label, name, options in jobs:
        rows = [r for r in rows if r["criterion"] != label]
        rows.append(one_row(model, data, name, amounts, samples, args.obs_steps, options, label))
        print(json.dumps(rows[-1].get("accuracy", rows[-1])), label, file=sys.stderr, flush=True)
        write_json(path, {**header, "results": rows, "environment": environment()})
    print(f"wrote {path}", file=sys.stderr)
    return 0


def previous_rows(path: Path, rerun: list[str]) -> list[dict]:
    """Rows of an earlier run for the criteria not re-run now (variants go with theirs)."""
    if not path.exists():
        return []
    again = set(rerun) | {label for label, (c, _) in VARIANTS.items() if c in rerun}
    return [r for r in json.loads(path.read_text())["results"] if r["criterion"] not in again]


def one_row(model, data, name, amounts, samples, obs_steps, options=None, label=None) -> dict:
    if name in SKIP:
        return {"criterion": name, "skipped": SKIP[name]}
    seeds = [0, 1, 2] if name == "random" else [0]
    options = OPTIONS.get(name, {}) if options is None else options
    start = time.perf_counter()
    try:
        row = run_criterion(model, data, name, amounts, samples, seeds, options)
        if name == "obs":
            row["block_size_chosen"] = _obs_block_size(model, options)
        if name == "obs" and obs_steps > 1:
            acc, seconds = sweep_prune(model, data, name, options, amounts, 0, samples, obs_steps)
            row["obs_steps"] = {
                "steps": obs_steps,
                "accuracy": {str(a): v for a, v in acc.items()},
                "seconds": round(seconds, 1),
            }
    except Exception as err:  # record and go on: one broken criterion must not lose the rest
        row = {
            "criterion": name,
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=3),
        }
    row["criterion"] = label or name
    row["wall_seconds"] = round(time.perf_counter() - start, 1)
    return row


def _obs_block_size(model, options: dict):
    """The block size OBS uses for ``options`` on ``model`` (None: the exact inverse)."""
    crit = make_criterion("obs", **options)
    if crit.block_size != "auto":
        return crit.block_size
    shapes = {n: getattr(m, t).shape for n, (m, t) in eligible_targets(model).items()}
    return choose_block_size(shapes, crit.max_memory)


if __name__ == "__main__":
    sys.exit(main())
