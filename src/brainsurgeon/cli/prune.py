"""``brainsurgeon prune``: score, select and mask the weights of a run (one-shot or in rounds
with fine-tuning; resumable), and ``brainsurgeon criteria``: the saliency criteria."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import add_common, emit, say, table
from .runs_common import open_run

PRUNE_EPILOG = """\
examples:
  brainsurgeon prune runs/lenet --criterion magnitude --amount 0.9 --out runs/lenet-mag90
  brainsurgeon prune runs/lenet --criterion obs --option block_size=128 --amount 0.9 \\
      --obs-steps 4 --out runs/lenet-obs
  brainsurgeon prune runs/lenet --criterion obd-sd --amount 0.92 --schedule iterative \\
      --rounds 10 --finetune-epochs 2 --out runs/lenet-obdsd      # Ctrl-C, then add --resume
  brainsurgeon prune runs/lenet --criterion obd --option hessian=ggn --scheme per-layer \\
      --layer-sparsity results/sens/layer_sparsity.json --out runs/lenet-obd
  brainsurgeon prune runs/lenet --criterion magnitude --scheme nm --nm 2:4 --out runs/lenet-24

Scores come from the run's training split (--samples of them); the amount is the final
fraction of eligible weights (Linear/Conv weights; --include-bias, --exclude-first/last)
set to zero, hit exactly. Schemes: global (one ranking), per-layer (same fraction per
layer), class-distribution (|w| < lam * sigma per layer), threshold (--threshold), nm (N:M).
Schedules: oneshot, iterative (--rounds, geometric or linear --spacing), gradual (Zhu &
Gupta cubic from --initial-amount), steps (--initial-amount X -> --amount Y). Each round is
saved to OUT/rounds/NN; --resume continues after the last complete one.
See `brainsurgeon criteria` for the criteria and their options."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a run's weights by a saliency criterion",
        description=__doc__,
        epilog=PRUNE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory to prune")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out")
    p.add_argument("--force", action="store_true", help="discard an existing --out")
    _scoring(p.add_argument_group("scoring"))
    _selection(p.add_argument_group("selection"))
    _schedule(p.add_argument_group("schedule and fine-tuning"))
    add_common(p)
    p.set_defaults(func=run)

    c = sub.add_parser(
        "criteria",
        help="list the saliency criteria",
        description="List every saliency criterion with a one-line description and its options.",
        epilog="example:\n  brainsurgeon criteria --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(c, device=False, seed=False)
    c.set_defaults(func=run_criteria)


def _scoring(g) -> None:
    g.add_argument("--criterion", default="magnitude", help="see `brainsurgeon criteria`")
    g.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="criterion option, repeatable (e.g. --option hessian=ggn)",
    )
    g.add_argument("--samples", type=int, default=1000, help="calibration samples (default 1000)")
    g.add_argument("--batch-size", type=int, default=256, help="batch size for statistics")


def _selection(g) -> None:
    g.add_argument("--amount", type=float, default=0.5, help="final sparsity in (0, 1)")
    g.add_argument(
        "--scheme",
        default="global",
        help="global | per-layer | class-distribution | threshold | nm",
    )
    g.add_argument(
        "--layer-sparsity",
        metavar="FILE.json",
        help='per-layer targets {"fc1": 0.9, ...} (implies --scheme per-layer)',
    )
    g.add_argument("--nm", default="2:4", help="N:M pattern for --scheme nm (default 2:4)")
    g.add_argument("--threshold", type=float, help="score threshold for --scheme threshold")
    g.add_argument(
        "--lam", type=float, help="class-distribution factor (default: solved to hit --amount)"
    )
    g.add_argument("--include-bias", action="store_true", help="prune biases too")
    g.add_argument("--exclude-first", action="store_true", help="leave the first layer dense")
    g.add_argument("--exclude-last", action="store_true", help="leave the last layer dense")


def _schedule(g) -> None:
    g.add_argument("--schedule", default="oneshot", help="oneshot | iterative | gradual | steps")
    g.add_argument("--rounds", type=int, default=1, help="rounds of prune + fine-tune")
    g.add_argument("--spacing", default="geometric", help="iterative: geometric | linear")
    g.add_argument(
        "--initial-amount",
        type=float,
        default=0.0,
        help="gradual: starting sparsity; steps: the first step's sparsity X",
    )
    g.add_argument(
        "--obs-steps",
        type=int,
        default=1,
        help="split each round into N prune steps, rescoring in between",
    )
    g.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs per round")
    g.add_argument(
        "--finetune-lr",
        type=float,
        default=0.005,
        help="fine-tuning learning rate, halved every 2 epochs (default 0.005)",
    )
    g.add_argument("--finetune-batch-size", type=int, default=64)
    g.add_argument(
        "--no-adjust-dropout",
        action="store_true",
        help="keep dropout rates while fine-tuning (default: Han's sqrt rule)",
    )
    g.add_argument("--l1", type=float, default=0.0, help="L1 penalty while fine-tuning")
    g.add_argument("--l2", type=float, default=0.0, help="L2 penalty while fine-tuning")
    g.add_argument(
        "--group-lasso",
        type=float,
        default=0.0,
        help="group lasso (rows and columns) penalty while fine-tuning",
    )


def parse_options(items: list[str], what: str = "--option") -> dict[str, Any]:
    """``["hessian=ggn", "k=2"]`` -> ``{"hessian": "ggn", "k": 2}`` (JSON values if they parse)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what}: expected KEY=VALUE, got {item!r}; e.g. {what} hessian=ggn")
        key, text = item.split("=", 1)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key.strip()] = value
    return out


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(f"--nm must look like N:M (e.g. 2:4), got {text!r}") from None
    return n, m


def _layer_sparsity(path: str | None) -> dict[str, float] | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--layer-sparsity file {file} does not exist")
    try:
        value = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"--layer-sparsity {file} is not valid JSON ({err.msg})") from None
    if isinstance(value, dict) and isinstance(value.get("layer_sparsity"), dict):
        value = value["layer_sparsity"]
    if not isinstance(value, dict):
        raise ConfigError(f'--layer-sparsity {file} must hold {{"layer": sparsity, ...}}')
    return value


def prune_config(args: argparse.Namespace):
    from ..pruning import PruneConfig

    layer_sparsity = _layer_sparsity(args.layer_sparsity)
    return PruneConfig(
        criterion=args.criterion,
        criterion_options=parse_options(args.option),
        amount=args.amount,
        scheme="per-layer" if layer_sparsity and args.scheme == "global" else args.scheme,
        schedule=args.schedule,
        rounds=args.rounds,
        spacing=args.spacing,
        initial_amount=args.initial_amount,
        obs_steps=args.obs_steps,
        samples=args.samples,
        batch_size=args.batch_size,
        seed=args.seed,
        layer_sparsity=layer_sparsity,
        include_bias=args.include_bias,
        include_first=not args.exclude_first,
        include_last=not args.exclude_last,
        nm=_nm(args.nm),
        threshold=args.threshold,
        lam=args.lam,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        finetune_batch_size=args.finetune_batch_size,
        adjust_dropout=not args.no_adjust_dropout,
        l1=args.l1,
        l2=args.l2,
        group_lasso=args.group_lasso,
    )


def run(args: argparse.Namespace) -> int:
    from ..pruning import prune
    from ..pruning.iterative import check_out_dir

    config = prune_config(args)  # every option is validated before any work or output
    out = Path(args.out)
    check_out_dir(out, resume=args.resume, force=args.force)
    source = open_run(args)
    data = source.data()
    step = {
        "step": "prune",
        "criterion": config.criterion,
        "amount": config.amount,
        "scheme": config.scheme,
        "schedule": config.schedule,
        "rounds": config.rounds,
    }
    say(
        args,
        f"pruning {source.path} with {config.criterion} to {config.amount:.1%} "
        f"({config.scheme}, {config.schedule}) -> {out}",
    )
    result = prune(
        source.model,
        config,
        data,
        device=args.device,
        progress=not args.quiet,
        out_dir=out,
        resume=args.resume,
        force=args.force,
        base_config=source.child_config(step),
        callback=_printer(args, config),
    )
    payload = {"run": str(out), "parent": str(source.path), **result.to_dict()}
    last = result.rounds[-1] if result.rounds else {}
    payload["test_accuracy"] = last.get("accuracy")
    rows = [[name, 100 * s] for name, s in result.sparsity.items()]
    rows.append(["total", 100 * result.total_sparsity])
    text = table(rows, ["tensor", "sparsity %"])
    if last.get("accuracy") is not None:
        text += f"\n\ntest accuracy {100 * last['accuracy']:.2f}%  ->  {out}"
    emit(args, payload, text)
    return 0


def _printer(args: argparse.Namespace, config):
    def show(record: dict[str, Any]) -> None:
        acc = ""
        if "accuracy" in record:
            acc = f"  acc {100 * record['accuracy_pruned']:.2f}%"
            if config.finetune_epochs:
                acc += f" -> fine-tuned {100 * record['accuracy']:.2f}%"
        say(
            args,
            f"round {record['round']}/{config.rounds}  sparsity "
            f"{100 * record['sparsity']:.2f}%{acc}  ({record['seconds']:.1f} s)",
        )

    return show


def run_criteria(args: argparse.Namespace) -> int:
    from ..pruning import CRITERIA

    rows = []
    for name, description in CRITERIA.describe().items():
        cls = CRITERIA.get(name)
        params = inspect.signature(cls.__init__).parameters
        options = {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in params.items()
            if k not in ("self", "args", "kwargs")
        }
        rows.append(
            {
                "name": name,
                "description": description,
                "needs_data": cls.needs_data,
                "loss_scale": cls.loss_scale,
                "options": options,
            }
        )
    width = max(len(r["name"]) for r in rows)
    lines = [f"{r['name']:<{width}}  {r['description']}" for r in rows]
    lines.append("\noptions: brainsurgeon criteria --json; pass them as --option KEY=VALUE")
    emit(args, {"criteria": rows}, "\n".join(lines))
    return 0
