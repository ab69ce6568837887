"""``brainsurgeon evaluate``: accuracy and loss of a run on a split of its data."""

from __future__ import annotations

import argparse

from .common import add_common, emit, table
from .runs_common import open_run

EPILOG = """\
examples:
  brainsurgeon evaluate runs/lenet300
  brainsurgeon evaluate runs/lenet300 --split val --json
  brainsurgeon evaluate runs/lenet300 --data my_mnist.npz   # same model, other data"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy and loss of a run on test/val/train",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--data", default=None, help="evaluate on other data (default: the run's)")
    add_common(p, seed=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training import evaluate

    r = open_run(args)
    data = r.data(name=args.data) if args.data else r.data()
    result = evaluate(r.model, data, split=args.split)
    payload = {"run": str(r.path), "split": args.split, **result}
    emit(
        args,
        payload,
        table(
            [
                [
                    str(r.path),
                    args.split,
                    result["accuracy"] * 100,
                    result["loss"],
                    result["errors"],
                    result["samples"],
                ]
            ],
            ["run", "split", "accuracy %", "loss", "errors", "samples"],
        ),
    )
    return 0
