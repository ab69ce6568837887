"""``brainsurgeon factorize``: swap layers for truncated-SVD factor pairs, optionally fine-tune."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, RunDirError
from .common import add_common, emit, say, table
from .options import add_loss_option, add_target_options

EPILOG = """\
examples:
  brainsurgeon factorize runs/lenet --energy 0.95 --out runs/lenet-svd
  brainsurgeon factorize runs/lenet --rank 32 --layers fc1,fc2 --finetune-epochs 2 --out runs/r32
  brainsurgeon factorize runs/lenet5 --ratio 4 --layers fc1 --out runs/lenet5-fc1x4
  brainsurgeon factorize runs/lenet --budget 0.25 --finetune-epochs 2 --out runs/lenet-b25

Each factored layer W (m x n) becomes two layers (n -> k -> m) from its truncated SVD; a
Conv2d becomes a k-channel conv followed by a 1x1 conv. The table shows each layer's rank k,
the energy kept (sum of the first k squared singular values over all of them) and the rate
m n / (k (m + n + 1)). The result is a run directory that loads, prunes and quantizes like any
other."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "factorize",
        help="low-rank SVD factorization of Linear/Conv2d layers",
        description="Replace Linear and Conv2d layers of a trained run by low-rank factor "
        "pairs from their truncated SVD (Denton et al. 2014), with the rank chosen by retained "
        "energy, a fixed rank, a target compression rate, or a global weight budget allocated "
        "by measured accuracy sensitivity; optionally fine-tune, and save a new run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory to factorize (from `brainsurgeon train`)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--energy",
        type=float,
        help="keep this fraction of each layer's squared singular values, in (0, 1] (e.g. 0.95)",
    )
    how.add_argument("--rank", type=int, help="the same rank k for every factored layer")
    how.add_argument("--ratio", type=float, help="target rate m n / (k (m + n + 1)) per layer, > 1")
    how.add_argument(
        "--budget",
        type=float,
        help="keep this fraction of the layers' weights "
        "overall, in (0, 1); ranks chosen greedily by measured validation accuracy",
    )
    add_target_options(p)
    add_loss_option(p)
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="fine-tune epochs after factorizing (default: 0)",
    )
    p.add_argument(
        "--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="fine-tuning batch size")
    p.add_argument(
        "--eval-samples",
        type=int,
        default=2000,
        help="validation samples for --budget sensitivity (default 2000)",
    )
    p.add_argument("--out", required=True, help="new run directory to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_common(p)
    p.set_defaults(func=run)


def _options(args: argparse.Namespace):
    """Validate every option before anything is loaded or written."""
    from ..factorization import FactorizeConfig
    from ..losses import resolve_loss
    from ..pipeline import FinetuneConfig

    resolve_loss(args.loss)
    layers = args.layers
    config = FactorizeConfig(
        energy=args.energy,
        rank=args.rank,
        ratio=args.ratio,
        budget=args.budget,
        layers=layers,
        exclude=args.exclude,
        eval_samples=args.eval_samples,
        seed=args.seed,
    )
    if args.finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    train = FinetuneConfig(
        epochs=args.finetune_epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed
    )
    if Path(args.out).exists() and not args.force:
        raise RunDirError(f"{args.out} already exists; choose another --out or pass --force")
    return config, train


def run(args: argparse.Namespace) -> int:
    from ..factorization import factorize
    from ..pipeline import finetune, save_child
    from ..runs import load_run
    from ..training import describe, evaluate
    from ..training.evaluation import recorded_loss
    from ..utils import resolve_device, seed_everything

    config, train = _options(args)
    device = resolve_device(args.device)
    parent = load_run(args.run, device=device)
    data = parent.data(progress=not args.quiet)
    seed_everything(args.seed)
    model, loss = parent.model, args.loss or recorded_loss(parent.config)
    before = evaluate(model, data, loss=loss)
    result = factorize(model, config, data, loss=loss, device=device)
    if result.note:
        say(args, result.note)
    after = evaluate(model, data, loss=loss)
    say(args, f"factorized: test {describe(before)} -> {describe(after)}")
    history = []
    if train.epochs:
        history = finetune(
            model, data, train, device=device, loss=loss, progress=not args.quiet, desc="finetune"
        )
        after = evaluate(model, data, loss=loss)
        say(args, f"fine-tuned {train.epochs} epochs: test {describe(after)}")
    summary = {
        **result.to_dict(),
        "finetune": train.to_dict() if train.epochs else None,
        "accuracy_before": before.get("accuracy"),
        "accuracy_factored": after.get("accuracy"),
    }
    metrics = {"test": after, "before": before, "finetune_history": history}
    extra = {"loss": loss} if loss else {}
    out = save_child(
        model,
        parent,
        args.out,
        step={"step": "factorize", **summary},
        compression={"factorization": summary},
        metrics=metrics,
        force=args.force,
        **extra,
    )
    payload = {"out": str(out), **summary, "test": after, "before": before}
    emit(args, payload, _text(result, before, after, out))
    return 0


def _text(result, before, after, out) -> str:
    from ..training import describe

    rows = [
        [
            p.name,
            p.kind,
            f"{p.m}x{p.n}",
            p.rank or "-",
            min(p.m, p.n),
            p.energy,
            p.rate,
            p.weights_before,
            p.weights_after,
            p.reason.split(":")[0],
        ]
        for p in result.layers
    ]
    d = result.to_dict()
    lines = [
        table(
            rows,
            [
                "layer",
                "kind",
                "m x n",
                "rank",
                "full",
                "energy",
                "rate",
                "weights",
                "after",
                "note",
            ],
        ),
        f"\nweights in these layers: {d['weights_before']:,} -> {d['weights_after']:,} "
        f"({d['weight_ratio']:.2f}x)",
        *([result.note] if result.note else []),
        f"test {describe(before)} -> {describe(after)}",
        f"saved to {out}",
    ]
    return "\n".join(lines)
