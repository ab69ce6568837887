"""``brainsurgeon prune``: score, select and mask the weights of a run (one-shot or in rounds
with fine-tuning; resumable), and ``brainsurgeon criteria``: the saliency criteria."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import add_command, add_common, emit, say, table
from .options import (
    TARGET_HELP,
    Flag,
    add_config_options,
    add_loss_option,
    config_from_args,
    option_types,
    parse_options,
)
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


PRUNE_HELP = {
    "criterion": "saliency criterion (see `brainsurgeon criteria`; for --granularity "
    "neuron|channel|head a unit criterion: l1, l2, activation, apoz, taylor, obd, obd-sd, "
    "true-damage, dropout-regression, group-obs, random)",
    "granularity": "element (single weights) or whole units: neuron, channel, head "
    "(--amount = the fraction of units; add --shrink to cut them out)",
    "samples": "calibration samples",
    "batch_size": "batch size for statistics",
    "max_memory": "memory budget of the statistics chunks, e.g. 2GB or 512MiB (default: none)",
    "amount": "final sparsity in (0, 1)",
    "scheme": "selection scheme",
    "threshold": "score threshold for --scheme threshold",
    "lam": "class-distribution factor (default: solved to hit --amount)",
    "nm": "N:M pattern for --scheme nm",
    "include_bias": "prune biases too",
    "include_first": "leave the first layer dense",
    "include_last": "leave the last layer dense",
    "schedule": "when to prune",
    "rounds": "rounds of prune + fine-tune",
    "spacing": "iterative schedule's spacing",
    "initial_amount": "gradual: starting sparsity; steps: the first step's sparsity X",
    "obs_steps": "split each round into N prune steps, rescoring in between",
    "finetune_epochs": "fine-tuning epochs per round",
    "finetune_lr": "fine-tuning learning rate, halved every 2 epochs",
    "finetune_batch_size": "fine-tuning batch size",
    "finetune_schedule": "fine-tuning lr schedule: step (halved every 2 epochs), cosine, none",
    "finetune_weight_decay": "weight decay while fine-tuning",
    "final_finetune_epochs": "fine-tuning epochs after the last round (default: as the others)",
    "adjust_dropout": "keep dropout rates while fine-tuning (default: Han's sqrt rule)",
    "l1": "L1 penalty while fine-tuning",
    "l2": "L2 penalty while fine-tuning",
    "group_lasso": "group lasso (rows and columns) penalty while fine-tuning",
    **TARGET_HELP,
}
SCORING = ("granularity", "criterion", "samples", "batch_size", "max_memory")
SELECTION = (
    "amount",
    "scheme",
    "nm",
    "threshold",
    "lam",
    "include_bias",
    "include_first",
    "include_last",
    "layers",
    "exclude",
)
SCHEDULE = (
    "schedule",
    "rounds",
    "spacing",
    "initial_amount",
    "obs_steps",
    "finetune_epochs",
    "finetune_lr",
    "finetune_batch_size",
    "finetune_schedule",
    "finetune_weight_decay",
    "final_finetune_epochs",
    "adjust_dropout",
    "l1",
    "l2",
    "group_lasso",
)


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(f"--nm must look like N:M (e.g. 2:4), got {text!r}") from None
    return n, m


FLAGS = {
    "nm": Flag(parse=_nm, metavar="N:M", show=lambda nm: f"{nm[0]}:{nm[1]}"),
    "include_first": Flag("--exclude-first", invert=True),
    "include_last": Flag("--exclude-last", invert=True),
}


def choices() -> dict[str, list[str]]:
    """Valid names of the registry-backed fields (shown in --help, checked by the config)."""
    from ..pruning import CRITERIA, SCHEDULES, SELECTORS
    from ..pruning.schedules import SPACINGS
    from ..structured import UNIT_CRITERIA

    return {
        "criterion": sorted({*CRITERIA.names(), *UNIT_CRITERIA.names()}),
        "granularity": ["element", "neuron", "channel", "head"],
        "scheme": SELECTORS.names(),
        "schedule": SCHEDULES.names(),
        "spacing": list(SPACINGS),
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "prune",
        "prune a run's weights (or whole neurons, channels, heads)",
        __doc__,
        PRUNE_EPILOG,
    )
    p.add_argument("run", help="run directory to prune")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out")
    p.add_argument("--force", action="store_true", help="discard an existing --out")
    p.add_argument(
        "--shrink",
        action="store_true",
        help="with --granularity neuron|channel|head: cut the removed units out at the end "
        "(OUT is then the smaller dense model; `brainsurgeon shrink` does it later)",
    )
    add_prune_options(p)
    add_common(p)
    p.set_defaults(func=run)

    c = add_command(
        sub,
        "criteria",
        "list the saliency criteria",
        "List every saliency criterion with a one-line description and its options.",
        "example:\n  brainsurgeon criteria --json",
    )
    add_common(c, device=False, seed=False)
    c.set_defaults(func=run_criteria)


def add_prune_options(p: argparse.ArgumentParser) -> None:
    """Every :class:`PruneConfig` option (defaults from the config), ``--option``,
    ``--layer-sparsity`` and ``--loss``."""
    from ..pruning import PruneConfig

    valid = choices()
    scoring = p.add_argument_group("scoring")
    kw = {"help": PRUNE_HELP, "choices": valid, "flags": FLAGS}
    add_config_options(scoring, PruneConfig, fields=SCORING, **kw)
    scoring.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="criterion option, repeatable (e.g. --option hessian=ggn)",
    )
    add_loss_option(scoring)
    selection = p.add_argument_group("selection")
    add_config_options(selection, PruneConfig, fields=SELECTION, **kw)
    selection.add_argument(
        "--layer-sparsity",
        metavar="FILE.json",
        help='per-layer targets {"fc1": 0.9, ...} (implies --scheme per-layer)',
    )
    schedule = p.add_argument_group("schedule and fine-tuning")
    add_config_options(schedule, PruneConfig, fields=SCHEDULE, **kw)


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
    """The :class:`PruneConfig` of the parsed options (validated)."""
    from ..pruning import CRITERIA, PruneConfig

    layer_sparsity = _layer_sparsity(args.layer_sparsity)
    types = {}
    if args.granularity != "element":
        from ..structured import UNIT_CRITERIA
        from ..structured.api import unit_criterion_name

        name = unit_criterion_name(args.criterion)
        types = option_types(UNIT_CRITERIA.get(name).__init__) if name in UNIT_CRITERIA else {}
    elif args.criterion in CRITERIA:
        types = option_types(CRITERIA.get(args.criterion).__init__)
    return config_from_args(
        PruneConfig,
        args,
        flags=FLAGS,
        criterion_options=parse_options(args.option, types=types),
        scheme="per-layer" if layer_sparsity and args.scheme == "global" else args.scheme,
        layer_sparsity=layer_sparsity,
    )


def run(args: argparse.Namespace) -> int:
    from ..losses import resolve_loss
    from ..pipeline import check_out_dir, prune_run
    from ..training.evaluation import recorded_loss
    from ..utils import determinism

    config = prune_config(args)  # every option is validated before any work or output
    if args.shrink and config.granularity == "element":
        raise ConfigError(
            "--shrink cuts whole units out; prune them with --granularity neuron|channel|head"
        )
    resolve_loss(args.loss)
    out = Path(args.out)
    check_out_dir(out, resume=args.resume, force=args.force)
    source = open_run(args)
    data = source.data()
    loss = args.loss or recorded_loss(source.config)
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
    result = prune_run(
        source.model,
        config,
        data,
        loss=loss,
        device=args.device,
        progress=not args.quiet,
        out_dir=out,
        resume=args.resume,
        force=args.force,
        base_config={**source.child_config(step), **determinism(args.device)},
        callback=_printer(args, config),
    )
    payload = {"run": str(out), "parent": str(source.path), **result.to_dict()}
    if args.shrink:
        payload["shrink"] = _shrink_out(source.model, out, data)
    last = result.rounds[-1] if result.rounds else {}
    payload["test_accuracy"] = last.get("accuracy")
    emit(args, payload, _summary(result, payload, last, out))
    return 0


def _summary(result, payload: dict[str, Any], last: dict[str, Any], out: Path) -> str:
    """The sparsity table, what shrinking removed, and the final test figure."""
    rows = [[name, 100 * s] for name, s in result.sparsity.items()]
    rows.append(["total", 100 * result.total_sparsity])
    text = table(rows, ["tensor", "sparsity %"])
    if "shrink" in payload:
        sh = payload["shrink"]
        text += f"\n\nshrunk: parameters {sh['params_before']:,} -> {sh['params_after']:,}; " + (
            ", ".join(f"{g} {k}/{n}" for g, (k, n) in sh["units"].items()) or "nothing dead"
        )
    if last.get("accuracy") is not None:
        text += f"\n\ntest accuracy {100 * last['accuracy']:.2f}%  ->  {out}"
    elif last.get("cosine") is not None:
        text += (
            f"\n\ntest cosine to the original {last['cosine']:.4f}, top-10 overlap "
            f"{last.get('top10') or float('nan'):.3f}  ->  {out}"
        )
    elif last.get("loss") is not None:
        text += f"\n\ntest loss {last['loss']:.4g}  ->  {out}"
    return text


def _shrink_out(model, out: Path, data) -> dict[str, Any]:
    """Cut the dead units out of the finished run at ``out`` and save it in place (its
    rounds/ kept); returns what was removed."""
    import os
    import shutil

    from .. import runs
    from ..structured.api import shrink_model

    result = shrink_model(model)
    cfg = runs.read_config(out)
    cfg.setdefault("history", []).append({"step": "shrink", "units": result.units})
    metrics = json.loads((out / runs.METRICS_FILE).read_text())
    tmp = out.with_name(f".{out.name}.shrunk")
    if tmp.exists():
        shutil.rmtree(tmp)
    keep = {k: v for k, v in cfg.items() if k not in ("model", "edits", "parametrizations")}
    runs.save(model, tmp, config=keep, metrics=metrics)
    if (out / "rounds").exists():
        os.replace(out / "rounds", tmp / "rounds")
    old = out.with_name(f".{out.name}.old")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old)
    return result.to_dict()


def _printer(args: argparse.Namespace, config):
    def show(record: dict[str, Any]) -> None:
        acc = ""
        if record.get("accuracy") is not None:
            acc = f"  acc {100 * record['accuracy_pruned']:.2f}%"
            if "finetune" in record:
                acc += f" -> fine-tuned {100 * record['accuracy']:.2f}%"
        elif record.get("cosine") is not None:  # an embedding model
            acc = f"  cosine {record['cosine_pruned']:.4f}"
            if "finetune" in record:
                acc += f" -> fine-tuned {record['cosine']:.4f}"
        elif "loss" in record:  # regression and custom losses: the loss itself
            acc = f"  loss {record['loss_pruned']:.4g}"
            if "finetune" in record:
                acc += f" -> fine-tuned {record['loss']:.4g}"
        chosen = f"  [{record['obs_inverse']}]" if "obs_inverse" in record else ""
        say(
            args,
            f"round {record['round']}/{config.rounds}  sparsity "
            f"{100 * record['sparsity']:.2f}%{acc}  ({record['seconds']:.1f} s){chosen}",
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
