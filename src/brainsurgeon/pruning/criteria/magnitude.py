"""``magnitude``: ``|w|`` or ``w^2`` (Han, Pool, Tran & Dally 2015, "Learning both weights and
connections for efficient neural networks")."""

from __future__ import annotations

import torch

from ...errors import ConfigError
from .base import Criterion, SaliencyContext, register_criterion


@register_criterion("magnitude", "|w| (power=1) or w^2 (power=2): Han et al. 2015")
class Magnitude(Criterion):
    """Score ``|w_q|^power``; needs no data."""

    needs_data = False
    loss_scale = False
    class_spread = "weights"  # See et al.: the class-distribution spread is the weights' std

    def __init__(self, power: int = 1) -> None:
        if power not in (1, 2):
            raise ConfigError(f"magnitude power must be 1 (|w|) or 2 (w^2), got {power!r}")
        self.power = int(power)

    def score(self, ctx: SaliencyContext, stats: object = None) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {n: ctx.tensor(n).detach().abs().pow(self.power).clone() for n in ctx.targets}
