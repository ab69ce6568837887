"""``true-damage``: the measured loss change of zeroing each weight, ``L(w_q = 0) - L(w)``.

Brute force (one forward pass over the calibration data per weight, batched with ``vmap``):
the ground truth the estimators are scored against by ``saliency-check``. Every weight of a
small net, or a seeded uniform sample of ``weights`` of them.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError
from ..damage import measure_damage, sample_entries
from .base import Criterion, SaliencyContext, register_criterion

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@register_criterion(
    "true-damage", "measured L(w_q=0) - L(w) per weight (brute force; weights=N samples)"
)
class TrueDamage(Criterion):
    """Measured damage per entry; float64 forward passes by default.

    With ``weights=N`` only N entries (uniform over all targets, seeded) are measured; the
    others score ``+inf``: "unknown, keep it", so they are pruned only after every measured
    entry. Already pruned entries score 0 (zeroing them changes nothing).
    """

    needs_data = True
    loss_scale = True

    def __init__(self, weights: int | None = None, dtype: str = "float64") -> None:
        if weights is not None and (isinstance(weights, bool) or int(weights) <= 0):
            raise ConfigError(f"true-damage weights must be a positive integer, got {weights!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"true-damage dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.weights = None if weights is None else int(weights)
        self.dtype = dtype

    def score(self, ctx: SaliencyContext, stats: object = None) -> dict[str, torch.Tensor]:
        ctx.require_data("true-damage")
        indices = sample_entries(ctx, self.weights, seed=ctx.seed)
        damage = measure_damage(ctx, indices, dtype=DTYPES[self.dtype])
        out = {}
        for name in ctx.targets:
            shape = ctx.tensor(name).shape
            fill = float("inf") if self.weights is not None else 0.0
            flat = torch.full((int(torch.Size(shape).numel()),), fill, dtype=torch.float64)
            mask = ctx.masks.get(name)
            if mask is not None:
                flat[~mask.reshape(-1).cpu()] = 0.0
            flat[indices[name]] = damage[name]
            out[name] = flat.view(shape)
        return out
