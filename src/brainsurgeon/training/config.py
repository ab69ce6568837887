"""Training options as a frozen config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import Config
from ..errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "step", "cosine")
MAX_SHIFT = 1024  # pixels; more than any image side this library trains on


@dataclass(frozen=True)
class TrainOptions(Config):
    """The optimizer options every training loop shares (``fit``, distillation), declared once."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0

    def train_options(self) -> dict[str, object]:
        """These fields' values, as keyword arguments for :class:`TrainConfig`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainOptions)}


@dataclass(frozen=True)
class TrainConfig(TrainOptions):
    """Options of :func:`brainsurgeon.training.fit`.

    ``lr_step`` / ``lr_gamma``: the step schedule multiplies the rate by ``lr_gamma`` every
    ``lr_step`` epochs (Han's fine-tuning: halve every 2 epochs). ``patience``: early stopping
    on validation accuracy (0 = off); the best epoch's weights are restored. ``l1`` / ``l2`` add
    ``lambda * sum |w|^r`` over weight tensors to the loss (``weight_decay`` is the optimizer's).
    ``shift`` / ``noise``: jitter every training batch by up to ``shift`` pixels per axis and add
    N(0, noise^2) (in normalised units); Hinton et al.'s MNIST teacher used a 2-pixel jitter.
    ``max_norm``: after every step, rescale each unit's incoming weight vector (a row of a Linear
    weight, an output filter of a conv) to norm <= ``max_norm`` (Srivastava et al.'s dropout
    nets; 0 = off). ``group_lasso``: DropNeuron's ``lambda * (sum_i ||W[i,:]|| + sum_j
    ||W[:,j]||)`` (Pan et al. 2016), which drives whole units to zero: then
    ``brainsurgeon shrink --tol`` cuts them out.
    """

    nesterov: bool = False
    lr_step: int = 2
    lr_gamma: float = 0.5
    patience: int = 0
    l1: float = 0.0
    l2: float = 0.0
    shift: int = 0
    noise: float = 0.0
    max_norm: float = 0.0
    group_lasso: float = 0.0

    def __post_init__(self) -> None:
        if self.group_lasso < 0:
            raise ConfigError(f"group_lasso must be >= 0, got {self.group_lasso}; e.g. 1e-4")
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}; e.g. --epochs 10")
        if self.batch_size <= 0:
            raise ConfigError(f"batch size must be > 0, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown lr schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}"
            )
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.shift <= MAX_SHIFT:
            raise ConfigError(
                f"shift must be 0..{MAX_SHIFT} pixels (a few: 2 for MNIST), got {self.shift}"
            )
        for name in ("weight_decay", "l1", "l2", "momentum", "noise", "max_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0, got {self.patience}")
