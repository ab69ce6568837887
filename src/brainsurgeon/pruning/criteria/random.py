"""``random``: uniform random scores, the honest baseline.

The OBD-SD notes found plain OBD losing to it on a large model; every criterion must beat it.
"""

from __future__ import annotations

import torch

from .base import Criterion, SaliencyContext, register_criterion


@register_criterion(
    "random", "uniform random scores (seeded): the baseline every criterion must beat"
)
class RandomCriterion(Criterion):
    """Scores ``U(0, 1)`` drawn from a generator seeded with ``ctx.seed`` (+ ``seed``)."""

    needs_data = False
    loss_scale = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def score(self, ctx: SaliencyContext, stats: object = None) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(ctx.seed * 1_000_003 + self.seed)
        return {name: torch.rand(ctx.tensor(name).shape, generator=g) for name in ctx.targets}
