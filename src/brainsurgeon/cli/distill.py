"""``brainsurgeon distill``: train a new student model to imitate a trained teacher run."""

from __future__ import annotations

import argparse

import torch

from .common import add_common, emit, say, table
from .runs_common import add_resume

EPILOG = """\
examples:
  brainsurgeon distill --teacher runs/big --student mlp:784-800-800-10 --loss kd \\
      --temperature 2 --alpha 0.9 --optimizer adam --epochs 40 --out runs/student
  brainsurgeon distill --teacher runs/big --student mlp:784-30-30-10 --transfer unlabeled \\
      --temperature 4 --out runs/tiny
  brainsurgeon distill --teacher runs/big --student mlp:784-300-100-10 --loss hint \\
      --hint-layer fc2 --guided-layer fc2 --hint-epochs 2 --out runs/fitnet

losses: kd (Hinton: a T^2 KL(p_teacher(T) || p_student(T)) + (1 - a) CE), logit-mse (Ba &
Caruana: regress the teacher's logits), hint (FitNets: first fit a student layer to a teacher
layer through a learned regressor, then KD). Transfer sets: train, val (held out), unlabeled
(labels ignored), augmented (noise and small shifts). The teacher runs in eval mode; its
outputs are computed once on a fixed transfer set. The new run records teacher, student, loss
and transfer set under compression.distillation in config.json.

At high temperatures the KD gradient approaches (z_student - z_teacher) / classes, which can be
large: with T = 20 use adam (its steps do not scale with the gradient) or a smaller SGD --lr
(0.01 worked on MNIST where 0.05 diverged). Try a few temperatures and keep the best on the
validation split: in benchmarks/distillation.py (MNIST, 84-error teacher, 3 seeds) the
800-800 student made 104 test errors at T = 2, 109 at T = 3 and 116 at T = 20, against 133
trained on the labels alone.

Every epoch is checkpointed under OUT/epochs/ (model, optimizer, RNG states); after a kill or
a NaN, run the same command with --resume (a lower --lr or --hint-lr is allowed): the result
is bit-identical to an uninterrupted run."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "distill",
        help="knowledge distillation into a new student model",
        description="Train a student network (a model spec such as mlp:784-800-800-10) to "
        "imitate a trained teacher run (Hinton et al. 2015; Ba & Caruana 2014; FitNets), then "
        "save it as a new run directory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--teacher", required=True, help="teacher run directory")
    p.add_argument(
        "--student",
        required=True,
        help="student model spec: lenet300, lenet5, mlp:IN-H1-...-OUT (hashed layers "
        "as 300h8), or package.module:factory",
    )
    p.add_argument("--loss", default="kd", help="kd | logit-mse | hint (default kd)")
    p.add_argument(
        "--temperature",
        type=float,
        default=4.0,
        help="softmax temperature T > 0 (default 4; Hinton used 20 on MNIST, 2-3 did best here)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.9,
        help="weight of the teacher term in [0, 1]; 1 - alpha goes to the labels",
    )
    p.add_argument(
        "--transfer", default="train", help="train | val | unlabeled | augmented (default train)"
    )
    p.add_argument(
        "--task-loss",
        default=None,
        metavar="NAME",
        help="task loss of the hard-label part (a registered loss; default: the teacher's)",
    )
    p.add_argument("--hint-layer", help="teacher layer for --loss hint (e.g. fc2)")
    p.add_argument("--guided-layer", help="student layer for --loss hint (e.g. fc2)")
    p.add_argument("--hint-epochs", type=int, default=2, help="FitNets stage-1 epochs")
    p.add_argument("--hint-lr", type=float, default=0.01, help="FitNets stage-1 learning rate")
    p.add_argument("--noise", type=float, default=0.1, help="--transfer augmented: noise std")
    p.add_argument("--shift", type=int, default=2, help="--transfer augmented: max shift (px)")
    p.add_argument("--epochs", type=int, default=10, help="distillation epochs (default 10)")
    p.add_argument("--optimizer", default="sgd", help="sgd | adam (default sgd)")
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate (default 0.05 for sgd, 0.001 adam)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--out", required=True, help="new run directory for the student")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_resume(p)
    add_common(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from ..distillation import DistillConfig
    from .train import default_lr

    config = DistillConfig(
        loss=args.loss,
        temperature=args.temperature,
        alpha=args.alpha,
        transfer=args.transfer,
        hint_layer=args.hint_layer,
        guided_layer=args.guided_layer,
        hint_epochs=args.hint_epochs,
        hint_lr=args.hint_lr,
        noise=args.noise,
        shift=args.shift,
        epochs=args.epochs,
        optimizer=args.optimizer,
        lr=args.lr if args.lr is not None else default_lr(args.optimizer),
        batch_size=args.batch_size,
        seed=args.seed,
    )
    return config


def run(args: argparse.Namespace) -> int:
    from .. import factorization  # noqa: F401  (registers the edit a factorized teacher needs)
    from ..distillation import distill
    from ..losses import resolve_loss
    from ..models import build_model
    from ..runs import load_run, save
    from ..training import describe, evaluate
    from ..training.checkpoint import epoch_checkpoints
    from ..training.evaluation import recorded_loss
    from ..utils import determinism, resolve_device, seed_everything
    from .runs_common import resumable_out

    resolve_loss(args.task_loss)
    config = _config(args)
    checkpoints = resumable_out(args)
    if checkpoints is None:
        say(args, f"{args.out} is finished already; nothing to resume")
        return 0
    device = resolve_device(args.device)
    teacher_run = load_run(args.teacher, device=device)
    data = teacher_run.data(progress=not args.quiet)
    _check_student_reads(args.student, data)
    seed_everything(args.seed)
    student = build_model(args.student, data.input_shape, data.num_classes)
    task = args.task_loss or recorded_loss(
        teacher_run.config
    )  # the teacher's task loss (None: from the labels)
    with epoch_checkpoints(*checkpoints):
        result = distill(
            teacher_run.model,
            student,
            config,
            data,
            device=device,
            progress=not args.quiet,
            loss=task,
        )
    teacher_ev = evaluate(teacher_run.model, data, loss=task)
    student_ev = evaluate(student, data, loss=task)
    say(args, f"student test {describe(student_ev)} (teacher {describe(teacher_ev)})")
    record = _record(args, config, teacher_run, student, result, (teacher_ev, student_ev))
    cfg = {**_child_config(args, config, teacher_run, record, task), **determinism(device)}
    metrics = {
        "test": student_ev,
        "teacher_test": teacher_ev,
        "history": result.history,
        "hint_history": result.hint_history,
    }
    out = save(student, args.out, config=cfg, metrics=metrics, force=True)
    emit(args, {"out": str(out), **record}, _text(record, out))
    return 0


def _check_student_reads(spec: str, data) -> None:
    """A built-in student (lenet, mlp, ...) reads float tensors; a text teacher's data are
    token ids (N, 2, L) and its outputs embeddings, not classes: refuse before building."""
    from ..data import as_dataset
    from ..errors import ConfigError

    if as_dataset(data, "train").x.dtype == torch.int64:
        raise ConfigError(
            f"the teacher reads token ids {tuple(data.input_shape)} (a text model) and "
            f"--student {spec} reads float features; to distil a text model, compress it "
            "with fine-tuning (`brainsurgeon prune RUN ... --finetune-epochs N`: its targets "
            "are the original's embeddings, a self-distillation)"
        )


def _record(args, config, teacher_run, student, result, evals) -> dict:
    """The ``compression.distillation`` record of the student's run."""
    teacher_ev, student_ev = evals
    return {
        "teacher": str(teacher_run.path),
        "teacher_model": teacher_run.config["model"],
        "student": args.student,
        "loss": config.loss,
        "temperature": config.temperature,
        "alpha": config.alpha,
        "transfer": result.transfer,
        "config": config.to_dict(),
        "teacher_test": teacher_ev,
        "student_test": student_ev,
        "teacher_params": _params(teacher_run.model),
        "student_params": _params(student),
    }


def _child_config(args, config, teacher_run, record: dict, task) -> dict:
    """The student's ``config.json``: the teacher's, with the distill step and options."""
    cfg = teacher_run.child_config(
        {
            "step": "distill",
            **{
                k: record[k]
                for k in ("teacher", "student", "loss", "temperature", "alpha", "transfer")
            },
        }
    )
    cfg.update(
        training=config.train_config().to_dict(),
        seed=args.seed,
        compression={"distillation": record},
        **({"loss": task} if task else {}),
    )
    return cfg


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _text(record: dict, out) -> str:
    from ..training import headline

    metric = headline(record["student_test"])[0]
    rows = [
        [
            role,
            name,
            record[f"{role}_params"],
            headline(record[f"{role}_test"])[1],
            record[f"{role}_test"].get("errors", "-"),
        ]
        for role, name in (
            ("teacher", record["teacher_model"]["name"]),
            ("student", record["student"]),
        )
    ]
    t = record["transfer"]
    header = "test acc" if metric == "accuracy" else f"test {metric}"
    return "\n".join(
        [
            table(rows, ["", "model", "params", header, "errors"]),
            f"\nloss {record['loss']} (T={record['temperature']}, alpha={record['alpha']}), "
            f"transfer set {t['kind']} ({t['samples']:,} samples, labels "
            f"{'used' if t['labels_used'] else 'ignored'})",
            f"saved to {out}",
        ]
    )
