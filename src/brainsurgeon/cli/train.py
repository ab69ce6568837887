"""``brainsurgeon train``: train a model on a data set and write a run directory."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import ConfigError
from ..training import TrainConfig, evaluate, fit
from .common import add_command, add_common, emit, say, table
from .options import Flag, add_config_options, add_loss_option, config_from_args
from .runs_common import add_resume, epoch_printer, resumable_out

EPILOG = """\
examples:
  brainsurgeon train --model lenet300 --data mnist --epochs 20 --out runs/lenet300
  brainsurgeon train --model lenet5 --data mnist --epochs 20 --lr 0.01 --out runs/lenet5
  brainsurgeon train --model mlp:64-128-64-10,dropout=0.2 --data digits --out runs/small
  brainsurgeon train --model mlp:784-1200-1200-10,dropout=0.5,input_dropout=0.2 --data mnist \
      --shift 2 --epochs 60 --out runs/teacher      # Hinton's jittered dropout teacher
  brainsurgeon train --model mypkg.nets:make_net --model-kwargs '{"width": 64}' --data data.npz

models: lenet300 (784-300-100-10), lenet5 (Caffe LeNet-5), mlp:IN-H1-...-OUT[,dropout=P]
(append h[F] to a hidden size for a HashedNets layer with compression F), or
package.module:factory. data: digits (embedded), mnist (fetched once), a folder with the
four MNIST IDX files, or an .npz with x_train, y_train, x_test, y_test [, x_val, y_val].

An interrupted run keeps a checkpoint after every epoch in OUT/epochs/; the same command
with --resume continues after the last one (a lower --lr is allowed, e.g. after a NaN), and
the result is identical to an uninterrupted run with the same seed."""


HELP = {
    "epochs": "training epochs",
    "batch_size": "batch size",
    "optimizer": "optimizer",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "weight_decay": "the optimizer's weight decay",
    "schedule": "learning-rate schedule",
    "lr_step": "step schedule: epochs per decay",
    "lr_gamma": "step schedule: decay factor",
    "patience": "early stopping: epochs without val improvement (0 = off)",
    "l1": "L1 penalty strength",
    "l2": "L2 penalty strength",
    "shift": "jitter each training image by up to N pixels per axis (Hinton's teacher: 2)",
    "noise": "add N(0, s^2) input noise while training",
    "max_norm": "cap each unit's incoming weight norm after each step (0 = off; dropout nets: 3-4)",
    "group_lasso": "DropNeuron group lasso on unit rows and columns (e.g. 1e-2): units die, "
    "then prune --granularity neuron --shrink removes them",
}
FIELDS = tuple(HELP)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", "train a model and write a run directory", __doc__, EPILOG)
    p.add_argument("--model", default="lenet300", help="model spec (default: lenet300)")
    p.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments for the model")
    p.add_argument("--data", default="digits", help="digits | mnist | IDX folder | .npz file")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="user data without x_val: hold out this many training samples",
    )
    from ..training.config import OPTIMIZERS, SCHEDULES

    add_config_options(
        p,
        TrainConfig,
        fields=FIELDS,
        help=HELP,
        choices={"optimizer": OPTIMIZERS, "schedule": SCHEDULES},
        flags={"schedule": Flag("--lr-schedule")},
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: 0.05 for sgd, 0.001 for adam)",
    )
    add_loss_option(p)
    p.add_argument("--out", default=None, help="run directory (default: runs/MODEL-DATA)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    add_resume(p)
    add_common(p)
    p.set_defaults(func=run)


def default_lr(optimizer: str, model: str | None = None) -> float:
    """The rate used when --lr is not given: 0.001 for adam, else the model's SGD default."""
    from ..models import DEFAULT_SGD_LR

    return 0.001 if optimizer == "adam" else DEFAULT_SGD_LR.get(model, 0.05)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of the parsed options (``--lr`` defaults by optimizer)."""
    lr = args.lr if args.lr is not None else default_lr(args.optimizer, args.model)
    return config_from_args(TrainConfig, args, lr=lr)


def parse_json_kwargs(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{what} is not valid JSON ({err.msg}); e.g. '{{\"width\": 64}}'"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def run(args: argparse.Namespace) -> int:
    from .. import runs
    from ..data import load_data
    from ..losses import resolve_loss
    from ..metrics import summarize
    from ..models import build_model
    from ..training.checkpoint import epoch_checkpoints
    from ..utils import determinism, resolve_device, seed_everything

    resolve_loss(args.loss)
    config = train_config(args)
    device = resolve_device(args.device)
    kwargs = parse_json_kwargs(args.model_kwargs, "--model-kwargs")
    safe_model = args.model.replace(":", "_").replace(",", "_").replace("/", "_")
    args.out = args.out or f"runs/{safe_model}-{args.data.replace('/', '_')}"
    checkpoints = resumable_out(args)
    if checkpoints is None:
        say(args, f"{args.out} is finished already; nothing to resume")
        return 0
    out = Path(args.out)
    data = load_data(args.data, seed=args.seed, val_size=args.val_size, progress=not args.quiet)
    seed_everything(args.seed)
    model = build_model(args.model, data.input_shape, data.num_classes, kwargs)
    say(
        args,
        f"training {args.model} on {data.name} {data.sizes()} for {config.epochs} epochs "
        f"on {device}",
    )
    start = time.perf_counter()
    with epoch_checkpoints(*checkpoints):
        history = fit(
            model,
            data,
            config,
            device=device,
            progress=not args.quiet,
            callback=epoch_printer(args, config.epochs),
            loss=args.loss,
        )
    seconds = time.perf_counter() - start
    test = evaluate(model, data, split="test", loss=args.loss)
    val = evaluate(model, data, split="val", loss=args.loss)
    summary = summarize(model, data.input_shape)
    metrics, cfg = _record(args, config, data, history, (test, val), summary, seconds)
    model.cpu()
    cfg.update(determinism(device))
    runs.save(model, out, config=cfg, metrics=metrics, force=True)
    payload = {"run": str(out), **{k: v for k, v in metrics.items() if k != "history"}}
    text = _text(out, test, val, summary["totals"]["params"], seconds)
    emit(args, payload, text)
    return 0


def _record(args, config, data, history, evals, summary, seconds) -> tuple[dict, dict]:
    """The run's ``metrics.json`` and ``config.json`` contents."""
    test, val = evals
    metrics = {
        "test_accuracy": test.get("accuracy"),
        "test_loss": test["loss"],
        "test_errors": test.get("errors"),
        "val_accuracy": val.get("accuracy"),
        "train_seconds": round(seconds, 2),
        "history": history,
        "totals": summary["totals"],
    }
    cfg = {
        "data": data.spec,
        "normalization": data.normalization,
        "seed": args.seed,
        "training": config.to_dict(),
        "compression": {},
        **({"loss": args.loss} if args.loss else {}),
        "history": [
            {"step": "train", "epochs": len(history), "test_accuracy": test.get("accuracy")}
        ],
    }
    return metrics, cfg


def _text(out, test: dict, val: dict, params: int, seconds: float) -> str:
    """The one-row summary table (accuracy for classification, the loss otherwise)."""
    from ..training import describe

    if "accuracy" not in test:
        row = [str(out), describe(test), describe(val), params, round(seconds, 1)]
        return table([row], ["run", "test", "val", "params", "seconds"])
    row = [str(out), test["accuracy"] * 100, test["errors"], val["accuracy"] * 100]
    header = ["run", "test acc %", "test errors", "val acc %", "params", "seconds"]
    return table([[*row, params, round(seconds, 1)]], header)
