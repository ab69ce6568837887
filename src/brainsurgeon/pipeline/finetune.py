"""One fine-tuning function with one set of defaults, shared by every verb and command.

Fine-tuning after pruning, quantization or factorization is a short SGD run at a small
learning rate halved every ``lr_step`` epochs (Han et al. 2015's retraining schedule).
Every caller (pruning rounds, ``factorize --finetune-epochs``, the recipe ``finetune`` step,
the experiments) builds a :class:`FinetuneConfig` and calls :func:`finetune`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..data.core import DataLike
from ..errors import ConfigError, check_positive_int
from ..losses import LossLike, resolve_loss
from ..training import TrainConfig, fit

Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class FinetuneConfig(Config):
    """Options of :func:`finetune`: ``epochs`` of SGD (``momentum``) on ``batch_size``
    batches at ``lr``, multiplied by ``lr_gamma`` every ``lr_step`` epochs (``schedule``
    ``step``; ``cosine`` anneals to 0 over the epochs, ``none`` keeps it); optional ``l1`` /
    ``l2`` penalties and ``weight_decay``; every random choice seeded from ``seed``."""

    epochs: int = 2
    lr: float = 0.005
    batch_size: int = 64
    momentum: float = 0.9
    lr_step: int = 2
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    schedule: str = "step"
    seed: int = 0

    def __post_init__(self) -> None:
        from ..training.config import SCHEDULES

        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown fine-tuning schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}"
            )
        check_positive_int("epochs", self.epochs, allow_zero=True)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("lr_step", self.lr_step)
        if not self.lr > 0:
            raise ConfigError(f"fine-tuning lr must be > 0, got {self.lr}; e.g. 0.005")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must lie in (0, 1], got {self.lr_gamma}; e.g. 0.5")
        for name in ("momentum", "weight_decay", "l1", "l2"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` that :func:`brainsurgeon.training.fit` runs."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            schedule=self.schedule,
            lr_step=self.lr_step,
            lr_gamma=self.lr_gamma,
            weight_decay=self.weight_decay,
            l1=self.l1,
            l2=self.l2,
            seed=self.seed,
        )


def finetune(
    model: nn.Module,
    data: DataLike,
    config: FinetuneConfig | None = None,
    *,
    loss: LossLike = None,
    penalties: list[Callable[[nn.Module], torch.Tensor]] | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    callback: Callback | None = None,
    desc: str = "fine-tune",
) -> list[dict[str, Any]]:
    """Fine-tune ``model`` in place on the train split of ``data``; one record per epoch.

    ``loss``: a registered name or ``(output, target) -> scalar`` (default cross entropy).
    ``callback(record)`` runs after every epoch. The torch RNG is forked and seeded from
    ``config.seed`` (dropout), so the caller's random state is left as it was.
    """
    config = config or FinetuneConfig()
    if config.epochs == 0:
        return []
    fn = resolve_loss(loss)

    def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fn(net(x), y)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return fit(
            model,
            data,
            config.train_config(),
            device=device,
            loss_fn=loss_fn,
            penalties=penalties,
            progress=progress,
            desc=desc,
            callback=callback,
        )
