"""``brainsurgeon sensitivity``: how much accuracy each layer loses when only it is pruned.

For every prunable layer and every sparsity of a grid, prunes that layer alone (one shot, no
fine-tuning) and measures validation accuracy: the per-layer curves of Han et al. 2015,
Fig. 6. From the curves it suggests, per layer, the largest sparsity that loses at most
--max-drop points, and writes it where `brainsurgeon prune --layer-sparsity FILE` reads it:
OUT/layer_sparsity.json = {"layer_sparsity": {"fc1.weight": 0.9, ...}}. The model with all
suggestions applied together is measured too (it loses more than any layer alone).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command, add_common, emit, say, table
from .options import TARGET_HELP, add_config_options, config_from_args, float_list

EPILOG = """\
examples:
  brainsurgeon sensitivity runs/lenet --out results/sens
  brainsurgeon sensitivity runs/lenet --criterion obd --max-drop 1.0 --sparsities 0.5,0.8,0.9,0.95
then prune with the suggestion:
  brainsurgeon prune runs/lenet --scheme per-layer \\
      --layer-sparsity results/sens/layer_sparsity.json"""


HELP = {
    "criterion": "criterion",
    "sparsities": "grid of sparsities in (0, 1)",
    "samples": "calibration samples",
    "loss": "loss to measure (cross_entropy when unset)",
    **TARGET_HELP,
}
FLAGS = {"sparsities": float_list("--sparsities")}


def register(sub: argparse._SubParsersAction) -> None:
    from ..experiments.sensitivity import SensitivityConfig
    from ..losses import LOSSES
    from ..pruning import CRITERIA

    p = add_command(
        sub, "sensitivity", "per-layer pruning sensitivity curves + suggestion", __doc__, EPILOG
    )
    p.add_argument("run", help="trained run directory")
    add_config_options(
        p,
        SensitivityConfig,
        fields=("criterion", "sparsities", "samples", "layers", "exclude", "loss"),
        help=HELP,
        choices={"criterion": CRITERIA.names(), "loss": LOSSES.names()},
        flags=FLAGS,
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="accuracy budget per layer in percentage points (default: 0.5)",
    )
    p.add_argument("--out", default=None, help="output folder (default: RUN-sensitivity)")
    p.add_argument("--force", action="store_true", help="discard a different experiment in --out")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..experiments.sensitivity import SUGGESTION_FILE, SensitivityConfig, sensitivity

    if not 0 <= args.max_drop < 100:
        raise ConfigError(
            f"--max-drop is in percentage points and must lie in [0, 100), got "
            f"{args.max_drop}; e.g. --max-drop 0.5"
        )
    config = config_from_args(SensitivityConfig, args, flags=FLAGS, max_drop=args.max_drop / 100)
    out = Path(args.out or f"{str(args.run).rstrip('/')}-sensitivity")
    payload = sensitivity(
        args.run, config, out, device=args.device, force=args.force, log=lambda m: say(args, m)
    )
    suggested = payload["suggested"]["layer_sparsity"]
    metric = payload["baseline"].get("metric", "accuracy")
    scale, unit = (100, " %") if metric == "accuracy" else (1, "")
    rows = []
    for layer, points in payload["curves"].items():
        rows.append([layer, suggested[layer], *(scale * p["accuracy"] for p in points)])
    header = [
        "layer",
        "suggested",
        *(f"{p['sparsity']:g}" for p in next(iter(payload["curves"].values()))),
    ]
    combined = payload["combined"]
    text = "\n".join(
        [
            f"validation {metric}{unit} when only one layer is pruned (unpruned "
            f"{scale * payload['baseline']['accuracy']:.4g}{unit}):",
            table(rows, header),
            ""
            if combined is None
            else f"\nall suggestions together: {scale * combined['accuracy']:.4g}{unit} "
            "(no fine-tuning)",
            f"suggestion written to {out / SUGGESTION_FILE}",
        ]
    )
    emit(
        args,
        {
            "out": str(out),
            "suggestion_file": str(out / SUGGESTION_FILE),
            **{k: payload[k] for k in ("baseline", "suggested", "combined", "curves")},
        },
        text,
    )
    return 0
