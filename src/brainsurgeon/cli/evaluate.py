"""``brainsurgeon evaluate``: the task's metric of a run on a split of its data.

Classification runs report accuracy, loss and errors; regression runs (config ``"loss":
"mse"`` or ``"l1"``, or float targets) report mse, mae, rmse, r2 and the loss."""

from __future__ import annotations

import argparse

from .common import add_common, emit, table
from .runs_common import open_run

EPILOG = """\
examples:
  brainsurgeon evaluate runs/lenet300
  brainsurgeon evaluate runs/lenet300 --split val --json
  brainsurgeon evaluate runs/lenet300 --data my_mnist.npz   # same model, other data
  brainsurgeon evaluate runs/housing --loss mse             # regression metrics"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy (or mse/mae for regression) and loss of a run on test/val/train",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--data", default=None, help="evaluate on other data (default: the run's)")
    p.add_argument(
        "--loss",
        default=None,
        help="task loss: cross_entropy, mse or l1 (default: the run's recorded loss, else "
        "chosen from the targets)",
    )
    add_common(p, seed=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training import evaluate
    from ..training.evaluation import recorded_loss

    r = open_run(args)
    data = r.data(name=args.data) if args.data else r.data()
    loss = args.loss or recorded_loss(r.config)
    result = evaluate(r.model, data, split=args.split, loss=loss)
    payload = {"run": str(r.path), "split": args.split, **result}
    emit(args, payload, _table(str(r.path), args.split, result))
    return 0


def _table(path: str, split: str, result: dict) -> str:
    if "accuracy" in result:
        row = [result["accuracy"] * 100, result["loss"], result["errors"]]
        header = ["accuracy %", "loss", "errors"]
    elif "cosine" in result:
        row = [result["cosine"], result["cosine_min"], result.get("top10"), result["loss"]]
        header = ["cosine", "min cosine", "top-10 overlap", "loss"]
    elif "mse" in result:
        row = [result[k] for k in ("mse", "mae", "rmse", "r2", "loss")]
        header = ["mse", "mae", "rmse", "r2", "loss"]
    else:
        row, header = [result["loss"]], ["loss"]
    return table([[path, split, *row, result["samples"]]], ["run", "split", *header, "samples"])
