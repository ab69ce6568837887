"""``brainsurgeon saliency-check``: how well each criterion predicts the true damage.

Samples weights of a run, measures the loss change of zeroing each one, and reports for each
criterion the Spearman and Kendall rank correlations between its scores and the measured
damage (and the mean absolute error of its predicted loss increase where the criterion
predicts one)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import add_command, add_common, emit, say, table
from .options import add_loss_option, add_target_options, parse_options
from .runs_common import open_run

EPILOG = """\
examples:
  brainsurgeon saliency-check runs/lenet --criteria obd,obs,obd-sd,magnitude --weights 2000
  brainsurgeon saliency-check runs/lenet --criteria obd,obd --option obd.hessian=ggn --json

Columns: spearman / kendall = rank agreement with the measured damage over all sampled
weights (1 = perfect, 0 = no better than random); low-half = Spearman over the weights whose
true damage is below the median (the ones pruning removes); mae = mean |predicted - true|
loss increase, only for criteria that predict a loss change (magnitude, random: rank only).
The same sampled weights and calibration samples serve every criterion."""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "saliency-check", "rank agreement of criteria with the true damage", __doc__, EPILOG
    )
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--criteria",
        default="magnitude,random",
        help="comma-separated criteria (see `brainsurgeon criteria`)",
    )
    p.add_argument("--weights", type=int, default=2000, help="sampled weights (default 2000)")
    p.add_argument(
        "--samples",
        type=int,
        default=1000,
        help="calibration samples of the training split (default 1000)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="CRITERION.KEY=VALUE",
        help="criterion option, repeatable (e.g. --option obd.hessian=ggn)",
    )
    add_loss_option(p)
    add_target_options(p)
    add_common(p)
    p.set_defaults(func=run)


def _options(items: list[str], criteria: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_options(items, "--option").items():
        name, dot, option = key.partition(".")
        if not dot or not option:
            raise ConfigError(
                f"--option {key}=...: expected CRITERION.KEY=VALUE, e.g. --option obd.hessian=ggn"
            )
        if name not in criteria:
            raise ConfigError(f"--option {key}: {name!r} is not in --criteria {criteria}")
        out.setdefault(name, {})[option] = value
    return out


def run(args: argparse.Namespace) -> int:
    from ..pruning.criteria import make_criterion
    from ..pruning.saliency_check import saliency_check

    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    if not criteria:
        raise ConfigError("--criteria is empty; e.g. --criteria obd,magnitude")
    options = _options(args.option, criteria)
    for name in criteria:  # validate names and options before loading anything
        make_criterion(name, **options.get(name, {}))
    if args.weights < 3 or args.samples < 1:
        raise ConfigError(
            f"--weights must be >= 3 and --samples >= 1, got {args.weights} and {args.samples}"
        )
    source = open_run(args)
    say(
        args,
        f"measuring the true damage of {args.weights} weights of {source.path} on "
        f"{args.samples} samples, then scoring {', '.join(criteria)}",
    )
    report = saliency_check(
        source.model,
        criteria,
        source.data(),
        weights=args.weights,
        seed=args.seed,
        samples=args.samples,
        device=args.device,
        options=options,
        loss=args.loss,
        layers=args.layers,
        exclude=args.exclude,
        progress=not args.quiet,
    )
    payload = {"run": str(source.path), **report}
    rows = [
        [
            r["criterion"],
            _num(r["spearman"]),
            _num(r["kendall"]),
            _num(r["spearman_low_half"]),
            "rank only" if r["mae"] is None else r["mae"],
            r["seconds"],
        ]
        for r in report["criteria"]
    ]
    text = table(rows, ["criterion", "spearman", "kendall", "low-half", "mae", "seconds"])
    truth = report["true_damage"]
    text += (
        f"\n\n{report['weights']} weights, {report['samples']} samples; true damage mean "
        f"{truth['mean']:.3g}, median {truth['median']:.3g}, "
        f"{100 * truth['negative_fraction']:.1f}% negative"
    )
    emit(args, payload, text)
    return 0


def _num(value: float | None) -> Any:
    return "n/a" if value is None else value
