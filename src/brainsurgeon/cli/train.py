"""``brainsurgeon train``: train a model on a data set and write a run directory."""

from __future__ import annotations

import argparse
import json
import time

from ..errors import ConfigError
from ..training import TrainConfig, evaluate, fit
from .common import add_common, emit, say, table
from .runs_common import check_out, epoch_printer

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
four MNIST IDX files, or an .npz with x_train, y_train, x_test, y_test [, x_val, y_val]."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model and write a run directory",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="lenet300", help="model spec (default: lenet300)")
    p.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments for the model")
    p.add_argument("--data", default="digits", help="digits | mnist | IDX folder | .npz file")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="user data without x_val: hold out this many training samples",
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="sgd", help="sgd | adam (default: sgd)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: 0.05 for sgd, 0.001 for adam)",
    )
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lr-schedule", default="cosine", help="none | step | cosine")
    p.add_argument("--lr-step", type=int, default=2, help="step schedule: epochs per decay")
    p.add_argument("--lr-gamma", type=float, default=0.5, help="step schedule: decay factor")
    p.add_argument(
        "--patience",
        type=int,
        default=0,
        help="early stopping: epochs without val improvement (0 = off)",
    )
    p.add_argument("--l1", type=float, default=0.0, help="L1 penalty strength")
    p.add_argument("--l2", type=float, default=0.0, help="L2 penalty strength")
    p.add_argument(
        "--shift",
        type=int,
        default=0,
        help="jitter each training image by up to N pixels per axis (Hinton's teacher: 2)",
    )
    p.add_argument(
        "--noise", type=float, default=0.0, help="add N(0, s^2) input noise while training"
    )
    p.add_argument(
        "--max-norm",
        type=float,
        default=0.0,
        help="cap each unit's incoming weight norm after every step (dropout nets: 3-4; 0 = off)",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/MODEL-DATA)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    add_common(p)
    p.set_defaults(func=run)


def default_lr(optimizer: str, model: str | None = None) -> float:
    """The rate used when --lr is not given: 0.001 for adam, else the model's SGD default."""
    from ..models import DEFAULT_SGD_LR

    return 0.001 if optimizer == "adam" else DEFAULT_SGD_LR.get(model, 0.05)


def train_config(args: argparse.Namespace) -> TrainConfig:
    lr = args.lr if args.lr is not None else default_lr(args.optimizer, args.model)
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        schedule=args.lr_schedule,
        lr_step=args.lr_step,
        lr_gamma=args.lr_gamma,
        patience=args.patience,
        l1=args.l1,
        l2=args.l2,
        shift=args.shift,
        noise=args.noise,
        max_norm=args.max_norm,
        seed=args.seed,
    )


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
    from ..metrics import summarize
    from ..models import build_model
    from ..utils import resolve_device, seed_everything

    config = train_config(args)
    device = resolve_device(args.device)
    kwargs = parse_json_kwargs(args.model_kwargs, "--model-kwargs")
    safe_model = args.model.replace(":", "_").replace(",", "_").replace("/", "_")
    out = check_out(args.out or f"runs/{safe_model}-{args.data.replace('/', '_')}", args.force)
    data = load_data(args.data, seed=args.seed, val_size=args.val_size, progress=not args.quiet)
    seed_everything(args.seed)
    model = build_model(args.model, data.input_shape, data.num_classes, kwargs)
    say(
        args,
        f"training {args.model} on {data.name} {data.sizes()} for {config.epochs} epochs "
        f"on {device}",
    )
    start = time.perf_counter()
    history = fit(
        model,
        data,
        config,
        device=device,
        progress=not args.quiet,
        on_epoch=epoch_printer(args, config.epochs),
    )
    seconds = time.perf_counter() - start
    test = evaluate(model, data, split="test")
    val = evaluate(model, data, split="val")
    summary = summarize(model, data.input_shape)
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_errors": test["errors"],
        "val_accuracy": val["accuracy"],
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
        "history": [{"step": "train", "epochs": len(history), "test_accuracy": test["accuracy"]}],
    }
    model.cpu()
    runs.save(model, out, config=cfg, metrics=metrics, force=args.force)
    payload = {"run": str(out), **{k: v for k, v in metrics.items() if k != "history"}}
    text = table(
        [
            [
                str(out),
                test["accuracy"] * 100,
                test["errors"],
                val["accuracy"] * 100,
                summary["totals"]["params"],
                round(seconds, 1),
            ]
        ],
        ["run", "test acc %", "test errors", "val acc %", "params", "seconds"],
    )
    emit(args, payload, text)
    return 0
