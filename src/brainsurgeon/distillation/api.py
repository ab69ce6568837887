"""``distill(teacher, student, config, data)``: train a student to imitate a teacher.

The teacher runs in eval mode (dropout off) and is never updated; on a fixed transfer set its
logits are computed once and cached. Training goes through :func:`brainsurgeon.training.fit`
with a distillation ``loss_fn``; the ``hint`` loss first trains the student up to its guided
layer (plus a regressor) on the FitNets hint loss, then the whole student with KD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.core import DataBundle, Dataset
from ..errors import ConfigError, DataError, check_positive_int
from ..losses import LossLike, loss_name, resolve_loss, task_of
from ..training import TrainConfig, fit
from ..training.config import TrainOptions
from ..training.evaluation import task_loss
from ..utils import resolve_device
from .hints import check_layer, make_regressor, tap
from .losses import LOSSES, hint_loss
from .transfer import TRANSFER_SETS, TransferSet, augment, build_transfer_set


@dataclass(frozen=True)
class DistillConfig(TrainOptions):
    """Options of :func:`distill`.

    ``alpha`` weighs the teacher term against cross entropy on the labels (ignored without
    labels). ``hint_layer`` / ``guided_layer``: teacher / student layer names for ``hint``;
    ``hint_epochs`` / ``hint_lr``: FitNets stage 1 (the summed hint loss needs a smaller
    rate). ``noise`` (std, in normalised units) and ``shift`` (pixels) shape the ``augmented``
    transfer set. The optimizer options are :class:`TrainOptions`' (shared with
    :class:`TrainConfig`), with a larger default batch.
    """

    loss: str = "kd"
    temperature: float = 4.0
    alpha: float = 0.9
    transfer: str = "train"
    hint_layer: str | None = None
    guided_layer: str | None = None
    hint_epochs: int = 2
    hint_lr: float = 0.01
    noise: float = 0.1
    shift: int = 2
    batch_size: int = 128

    def __post_init__(self) -> None:
        LOSSES.get(self.loss)
        TRANSFER_SETS.get(self.transfer)
        if not self.temperature > 0:
            raise ConfigError(
                f"temperature must be > 0, got {self.temperature}; e.g. "
                "temperature 4 (Hinton et al. used 20 on MNIST)"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(
                f"alpha must lie in [0, 1], got {self.alpha}; it weighs the "
                "teacher term (1 = teacher only, 0 = labels only), e.g. 0.9"
            )
        check_positive_int("hint_epochs", self.hint_epochs, allow_zero=True)
        check_positive_int("shift", self.shift, allow_zero=True)
        if self.noise < 0:
            raise ConfigError(f"noise must be >= 0, got {self.noise}")
        self.train_config()  # validates the training options
        self.train_config(stage=1)

    def train_config(self, stage: int = 2) -> TrainConfig:
        """Training options of FitNets stage 1 (hints) or of the distillation (stage 2)."""
        options = self.train_options()
        if stage == 1:
            options.update(epochs=self.hint_epochs, lr=self.hint_lr)
        return TrainConfig(**options)


@dataclass
class DistillResult:
    """The trained student, its per-epoch history (and stage-1 history for hints)."""

    model: nn.Module
    config: DistillConfig
    transfer: dict[str, Any]
    history: list[dict[str, Any]]
    hint_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "transfer": self.transfer,
            "history": self.history,
            "hint_history": self.hint_history,
        }


def distill(
    teacher: nn.Module,
    student: nn.Module,
    config: DistillConfig,
    data: DataBundle,
    *,
    device: str | torch.device = "auto",
    progress: bool = True,
    loss: LossLike = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> DistillResult:
    """Train ``student`` (in place) to imitate ``teacher`` on ``config.transfer`` inputs.

    ``loss``: the task loss (a name such as ``"mse"``, a callable ``(output, target) ->
    scalar``, or None: cross entropy for labels, mse for float targets). It is the hard-label
    term weighted by ``1 - alpha`` and the validation loss reported each epoch;
    ``config.loss`` is the distillation loss. A regression task distills with ``logit-mse``
    only (softened class probabilities mean nothing for it). Checks first (before any
    training) that the student takes the teacher's inputs and gives outputs of the same
    shape, and that hint/guided layer names exist.
    """
    if not isinstance(data, DataBundle):
        raise DataError(
            f"distill needs a DataBundle (brainsurgeon.data.load_data(...)), got "
            f"{type(data).__name__}"
        )
    loss = task_loss(loss, data.train)
    _check_task(config, loss)
    device = resolve_device(device)
    teacher.to(device).eval()
    student.to(device)
    check_compatible(teacher, student, data.train.x[:2].to(device))
    if config.loss == "hint":
        check_layer(teacher, config.hint_layer, role="teacher", option="--hint-layer")
        check_layer(student, config.guided_layer, role="student", option="--guided-layer")
    transfer = build_transfer_set(config.transfer, data, teacher)
    index_set = Dataset(transfer.x, torch.arange(transfer.x.shape[0]))
    val = None if config.transfer == "val" else data.val
    hint_history = []
    if config.loss == "hint" and config.hint_epochs:
        hint_history = _hint_stage(teacher, student, config, transfer, index_set, device, progress)
    loss_fn = _distill_loss(teacher, config, transfer, resolve_loss(loss))
    history = fit(
        student,
        index_set,
        config.train_config(),
        val=val,
        device=device,
        loss=loss,
        loss_fn=loss_fn,
        progress=progress,
        desc="distill",
        callback=callback,
    )
    return DistillResult(student, config, transfer.describe(), history, hint_history)


def check_compatible(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> None:
    """Both models accept ``x`` and give outputs of one shape, else a :class:`ConfigError`."""
    with torch.no_grad():
        z_t = teacher(x)
        try:
            z_s = student(x)
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise ConfigError(
                f"the student does not accept the teacher's inputs of shape {tuple(x.shape[1:])}"
                f" ({first}); build the student for this data (input size "
                f"{x[0].numel()})"
            ) from None
    if z_s.shape != z_t.shape:
        raise ConfigError(
            f"the student outputs {tuple(z_s.shape[1:])} per sample but the teacher "
            f"outputs {tuple(z_t.shape[1:])}; give the student "
            f"{z_t.shape[-1]} outputs (e.g. mlp:...-{z_t.shape[-1]})"
        )


def _teacher_logits(teacher, transfer: TransferSet, idx, x, generator, config):
    """(inputs the student sees, teacher logits on them) for one batch."""
    if transfer.teacher_logits is not None:
        return x, transfer.teacher_logits[idx.to(transfer.teacher_logits.device)].to(x.device)
    x = augment(x, noise=config.noise, shift=config.shift, generator=generator)
    with torch.no_grad():
        return x, teacher(x)


def _labels(transfer: TransferSet, idx, device):
    return None if transfer.y is None else transfer.y[idx.to(transfer.y.device)].to(device)


def _check_task(config: DistillConfig, loss: LossLike) -> None:
    """Refuse a softmax-based distillation loss for a regression task."""
    if task_of(loss) == "regression" and config.loss != "logit-mse":
        raise ConfigError(
            f"distillation loss {config.loss!r} compares softened class probabilities, which "
            f"a regression task ({loss_name(loss)}) does not have; use loss 'logit-mse' "
            "(regress the teacher's outputs)"
        )


def _distill_loss(teacher, config: DistillConfig, transfer: TransferSet, hard):
    """``loss_fn(student, x, idx)`` for :func:`fit` (the dataset's "labels" are row indices);
    ``hard(output, target)`` is the task loss on the labels."""
    loss = LOSSES.get(config.loss)
    generator = torch.Generator().manual_seed(config.seed + 1)

    def loss_fn(student: nn.Module, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        x, z_t = _teacher_logits(teacher, transfer, idx, x, generator, config)
        return loss(
            student(x),
            z_t,
            _labels(transfer, idx, x.device),
            temperature=config.temperature,
            alpha=config.alpha,
            hard=hard,
        )

    return loss_fn


def _hint_stage(teacher, student, config, transfer, index_set, device, progress):
    """FitNets stage 1: fit the student's guided output, through a regressor, to the hint."""
    probe = transfer.x[:2].to(device)
    with (
        torch.no_grad(),
        tap(teacher, config.hint_layer) as t,
        tap(student, config.guided_layer) as s,
    ):
        teacher(probe)
        student(probe)
    regressor = make_regressor(s["out"], t["out"]).to(device)
    generator = torch.Generator().manual_seed(config.seed + 2)

    def loss_fn(model: nn.Module, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if transfer.teacher_logits is None:
            x = augment(x, noise=config.noise, shift=config.shift, generator=generator)
        with tap(teacher, config.hint_layer) as hint, tap(model, config.guided_layer) as guided:
            with torch.no_grad():
                teacher(x)
            model(x)
        return hint_loss(regressor(guided["out"]), hint["out"])

    params = [*student.parameters(), *regressor.parameters()]
    return fit(
        student,
        index_set,
        config.train_config(stage=1),
        val=None,
        device=device,
        loss_fn=loss_fn,
        params=params,
        progress=progress,
        desc="hints",
    )
