"""``brainsurgeon compare``: pruning criteria (and quantizers) side by side, under one budget.

Every criterion prunes the same trained run to each sparsity, scoring on the same calibration
samples and getting the same fine-tuning budget; accuracy is measured on the whole test split,
over several seeds (seeds vary the random criterion's draw and the fine-tuning shuffle).
Writes OUT/compare.json (every cell, mean and spread per method), two plots (accuracy vs
sparsity, accuracy vs compression ratio) and summary.md. Each finished cell is saved at once
in OUT/cells/, so an interrupted comparison re-run with the same options skips them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import add_command, add_common, emit, parse_kv_list, say, table
from .options import TARGET_HELP, add_config_options, config_from_args, float_list

EPILOG = """\
examples:
  brainsurgeon compare runs/lenet --criteria random,magnitude,obd,obd-sd,obs \\
      --criterion-options obs:block_size=128 --sparsities 0.5,0.7,0.8,0.9,0.95,0.98 \\
      --out results/compare
  brainsurgeon compare runs/lenet --criteria magnitude,obd --schedule iterative --rounds 3 \\
      --finetune-epochs 1 --seeds 3 --out results/compare-iter
  brainsurgeon compare runs/lenet --criteria magnitude --quantizers kmeans:5,uniform:8,ternary
then: brainsurgeon report results/compare"""


HELP = {
    "criteria": "criteria to compare (see `brainsurgeon criteria`)",
    "sparsities": "final sparsities in (0, 1)",
    "schedule": "pruning schedule",
    "rounds": "rounds of the iterative schedule",
    "seeds": "repetitions per cell",
    "samples": "calibration samples shared by every criterion",
    "scheme": "selection scheme",
    "finetune_epochs": "fine-tuning epochs after each round, the same for every cell",
    "finetune_lr": "fine-tuning learning rate",
    "quantizers": "quantizers METHOD[:BITS], e.g. kmeans:5,uniform:8,binary",
    "loss": "loss to measure and fine-tune (cross_entropy when unset)",
    **TARGET_HELP,
}
FIELDS = (
    "criteria",
    "sparsities",
    "schedule",
    "rounds",
    "seeds",
    "samples",
    "scheme",
    "finetune_epochs",
    "finetune_lr",
    "quantizers",
    "layers",
    "exclude",
    "loss",
)
FLAGS = {"sparsities": float_list("--sparsities")}


def register(sub: argparse._SubParsersAction) -> None:
    from ..experiments import CompareConfig
    from ..experiments.compare import SCHEDULES
    from ..losses import LOSSES
    from ..pruning import SELECTORS

    p = add_command(
        sub, "compare", "compare pruning criteria / quantizers under one budget", __doc__, EPILOG
    )
    p.add_argument("run", help="trained run directory to compress")
    add_config_options(
        p,
        CompareConfig,
        fields=FIELDS,
        help=HELP,
        choices={"schedule": SCHEDULES, "scheme": SELECTORS.names(), "loss": LOSSES.names()},
        flags=FLAGS,
    )
    p.add_argument(
        "--criterion-options",
        default="",
        help="options per criterion as CRITERION:OPTION=VALUE pairs, e.g. "
        "obs:block_size=128,obd:hessian=fisher",
    )
    p.add_argument("--out", default=None, help="output folder (default: RUN-compare)")
    p.add_argument(
        "--force", action="store_true", help="discard an existing different comparison in --out"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted --out: finished cells (OUT/cells/*.json) are kept "
        "(running again with the same options does the same)",
    )
    add_common(p)
    p.set_defaults(func=run)


def criterion_options(text: str) -> dict[str, dict[str, Any]]:
    """``obs:block_size=128,obd:hessian=fisher`` -> ``{"obs": {"block_size": 128}, ...}``."""
    from ..errors import ConfigError

    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_kv_list(text, what="--criterion-options", cast=str).items():
        crit, sep, option = key.partition(":")
        if not sep or not crit or not option:
            raise ConfigError(
                f"--criterion-options: expected CRITERION:OPTION=VALUE, got "
                f"{key}={value}; e.g. obs:block_size=128"
            )
        out.setdefault(crit, {})[option] = _auto(value)
    return out


def _auto(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def run(args: argparse.Namespace) -> int:
    from ..experiments import CompareConfig, compare

    config = config_from_args(
        CompareConfig,
        args,
        flags=FLAGS,
        criterion_options=criterion_options(args.criterion_options),
    )
    out = Path(args.out or f"{str(args.run).rstrip('/')}-compare")
    payload = compare(
        args.run, config, out, device=args.device, force=args.force, log=lambda m: say(args, m)
    )
    metric = payload["baseline"].get("metric", "accuracy")
    scale, unit = (100, " %") if metric == "accuracy" else (1, "")
    rows = [
        [
            r["method"],
            "-" if r["sparsity"] is None else r["sparsity"],
            scale * r["accuracy"]["mean"],
            scale * r["accuracy"]["std"],
            r["compression_ratio"]["mean"],
        ]
        for r in payload["summary"]
    ]
    text = "\n".join(
        [
            table(rows, ["method", "sparsity", f"{metric}{unit}", f"std{unit}", "compression x"]),
            f"\nunpruned {metric} {scale * payload['baseline']['accuracy']:.4g}{unit}; wrote "
            f"{out}/compare.json, plots and summary.md",
        ]
    )
    emit(args, {"out": str(out), **{k: payload[k] for k in ("baseline", "summary", "plots")}}, text)
    return 0
