"""``brainsurgeon study obd-sd``: rerun the seed notes' OBD-SD experiment on a trained run.

Prunes the run in many rounds (geometric steps to --final-sparsity, fine-tuning after each)
once per criterion, with the same calibration samples and fine-tuning budget for all. Per
round and criterion it records accuracy (right after pruning and after fine-tuning), the
predicted against the measured loss increase, a histogram of |predicted damage| and of the
unmasked weights; on the trained model, the distribution over samples of the second
derivative of a few sampled weights and the SD against the mean of the per-sample damage.
The findings answer, with numbers, the notes' question: does OBD lose to random pruning,
and does OBD-SD fix it? Writes OUT/study.json, plots and OUT/summary.md; finished criteria
are kept, so an interrupted study re-run with the same options continues.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command, add_common, emit, say, table
from .options import add_config_options, config_from_args

EPILOG = """\
examples:
  brainsurgeon study obd-sd runs/lenet --out results/obd-sd
  brainsurgeon study obd-sd runs/lenet --rounds 17 --criteria obd,obd-sd,random,magnitude \\
      --final-sparsity 0.98 --finetune-epochs 1 --out results/obd-sd
then: brainsurgeon report results/obd-sd"""


HELP = {
    "criteria": "criteria to study",
    "rounds": "prune/fine-tune rounds",
    "final_sparsity": "sparsity after the last round, in (0, 1)",
    "finetune_epochs": "fine-tuning epochs per round",
    "finetune_lr": "fine-tuning learning rate",
    "samples": "calibration samples",
    "sampled_weights": "weights whose per-sample second derivative is plotted",
}
FIELDS = tuple(HELP)


def register(sub: argparse._SubParsersAction) -> None:
    from ..experiments.study import StudyConfig

    p = add_command(sub, "study", "experiments from the notes (obd-sd)", __doc__, EPILOG)
    p.add_argument("name", choices=["obd-sd"], help="which study (obd-sd)")
    p.add_argument("run", help="trained run directory")
    add_config_options(p, StudyConfig, fields=FIELDS, help=HELP)
    p.add_argument("--out", default=None, help="output folder (default: RUN-obd-sd)")
    p.add_argument("--force", action="store_true", help="discard a different study in --out")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted --out: finished cells (OUT/cells/*.json) are kept "
        "(running again with the same options does the same)",
    )
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.study import StudyConfig, study_obd_sd

    config = config_from_args(StudyConfig, args)
    out = Path(args.out or f"{str(args.run).rstrip('/')}-obd-sd")
    payload = study_obd_sd(
        args.run, config, out, device=args.device, force=args.force, log=lambda m: say(args, m)
    )
    f = payload["findings"]
    rows = [
        [c, 100 * t["final_accuracy"], 100 * t["mean_accuracy"], t["rounds_within_1pt"]]
        for c, t in f["per_criterion"].items()
    ]
    text = "\n".join(
        [
            table(rows, ["criterion", "final acc %", "mean acc %", "rounds within 1pt"]),
            "",
            (out / "summary.md").read_text(),
        ]
    )
    emit(args, {"out": str(out), "findings": f, "plots": payload["plots"]}, text)
    return 0
