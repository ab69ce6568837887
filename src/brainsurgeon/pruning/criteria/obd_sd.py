"""``obd-sd``: statistics over samples of the per-sample damage (the seed notes' OBD-SD).

``d_nq = -g_nq w_q + 0.5 h_nqq w_q^2`` is the second-order Taylor estimate of
``L_n(w_q = 0) - L_n(w)`` (``h_n`` the per-sample Gauss-Newton diagonal). Its mean over the
data is OBD with the first-order term; the notes rank by its spread instead. ``statistic``:

* ``sd``: standard deviation of ``d_nq`` over samples (low = no sample cares about ``w_q``);
* ``mean``: the mean damage (a loss-increase estimate);
* ``ucb``: ``|mean| + k * sd``, an upper confidence bound;
* ``cv``: ``sd / |mean|`` (0 where both vanish).

Mean and variance come from one streaming Welford pass (O(parameters) memory).
"""

from __future__ import annotations

import torch

from ...curvature import DamageStats
from ...curvature.backend import check_method
from ...curvature.context import finish, gather
from ...errors import ConfigError, check_positive_int
from .base import Criterion, SaliencyContext, register_criterion

STATISTICS = ("sd", "mean", "ucb", "cv")


@register_criterion("obd-sd", "spread (sd, mean, |mean|+k*sd, sd/|mean|) of per-sample OBD damage")
class OBDSD(Criterion):
    """Options: ``statistic`` (sd | mean | ucb | cv), ``k`` (ucb weight), ``method`` (rules |
    autograd), ``chunk_size`` (samples per per-sample pass)."""

    needs_data = True

    def __init__(
        self, statistic: str = "sd", k: float = 1.0, method: str = "rules", chunk_size: int = 256
    ) -> None:
        if statistic not in STATISTICS:
            raise ConfigError(
                f"obd-sd statistic must be one of {list(STATISTICS)}, got {statistic!r}"
            )
        if not float(k) >= 0:
            raise ConfigError(f"obd-sd k must be >= 0 (ucb = |mean| + k * sd), got {k!r}")
        self.statistic, self.k, self.method = statistic, float(k), check_method(method)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.loss_scale = statistic == "mean"

    def statistics(self, ctx: SaliencyContext) -> DamageStats:
        """The fitted Welford statistics of ``d_nq`` over ``ctx.data``."""
        ctx.require_data(self.name)
        acc = DamageStats(ctx.model, ctx.targets, ctx.loss_fn, self.method, self.chunk_size)
        return gather(acc, ctx, self.name)

    def score(self, ctx: SaliencyContext, stats: DamageStats) -> dict[str, torch.Tensor]:
        mean, sd = stats.mean(), stats.sd()
        out = {}
        for name in ctx.targets:
            m, s = mean[name], sd[name]
            if self.statistic == "sd":
                out[name] = s
            elif self.statistic == "mean":
                out[name] = m
            elif self.statistic == "ucb":
                out[name] = m.abs() + self.k * s
            else:
                out[name] = torch.where(s == 0, torch.zeros_like(s), s / m.abs())
        return finish(out, ctx)
