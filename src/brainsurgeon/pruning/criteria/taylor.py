"""``taylor1``: first-order Taylor saliency (Molchanov, Tyree, Karras, Aila & Kautz 2017,
"Pruning convolutional neural networks for resource efficient inference").

Zeroing ``w_q`` changes the loss by ``-g_q w_q`` to first order. Modes:

* ``abs``: ``|w_q g_q|`` with ``g`` the mean gradient over the data;
* ``signed``: ``-w_q g_q``, the predicted loss change itself (~0 after training);
* ``per-sample-abs``: ``mean_n |w_q g_nq|``, which does not cancel across samples.
"""

from __future__ import annotations

import torch

from ...curvature import GradientStats
from ...curvature.backend import check_method
from ...curvature.context import finish, gather, weights
from ...errors import ConfigError
from .base import Criterion, SaliencyContext, register_criterion

MODES = ("abs", "signed", "per-sample-abs")


@register_criterion(
    "taylor1", "first-order Taylor |w g| (abs, signed, per-sample-abs): Molchanov 2017"
)
class Taylor1(Criterion):
    """Options: ``mode`` (abs | signed | per-sample-abs), ``method`` (rules | autograd)."""

    needs_data = True

    def __init__(self, mode: str = "abs", method: str = "rules") -> None:
        if mode not in MODES:
            raise ConfigError(f"taylor1 mode must be one of {list(MODES)}, got {mode!r}")
        self.mode, self.method = mode, check_method(method)
        self.loss_scale = mode == "signed"

    def statistics(self, ctx: SaliencyContext) -> GradientStats:
        ctx.require_data(self.name)
        acc = GradientStats(ctx.model, ctx.targets, ctx.loss_fn, self.method)
        return gather(acc, ctx, self.name)

    def score(self, ctx: SaliencyContext, stats: GradientStats) -> dict[str, torch.Tensor]:
        acc, w = stats, weights(ctx)
        if self.mode == "per-sample-abs":
            abs_mean = acc.abs_mean()
            return finish({n: w[n].abs() * abs_mean[n] for n in w}, ctx)
        g = acc.mean()
        if self.mode == "signed":
            return finish({n: -w[n] * g[n] for n in w}, ctx)
        return finish({n: (w[n] * g[n]).abs() for n in w}, ctx)
