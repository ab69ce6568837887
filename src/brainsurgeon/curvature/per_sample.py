"""Streaming per-sample statistics: Welford mean and variance of the per-sample damage.

The OBD-SD idea (the seed notes): the second-order Taylor estimate of what zeroing ``w_q``
does to sample ``n``'s loss is ``d_nq = -g_nq w_q + 0.5 h_nqq w_q^2`` (``g_n`` the per-sample
gradient, ``h_n`` its GGN diagonal). Its mean over samples is OBD's estimate plus the
first-order term; its spread says how much the samples disagree. Both are accumulated in
one pass with Welford's algorithm, chunk by chunk (Chan et al.'s parallel combination), so
memory is O(parameters), never O(samples x parameters).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import check_positive_int
from .backend import PerSampleBackend
from .fields import Field, Outer
from .layers import Targets
from .outputs import LossFn


class Welford:
    """Running ``count``, ``mean`` and ``M2 = sum (x - mean)^2`` of a stream of tensors."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, values: Tensor) -> None:
        """Add the samples ``values`` (n, ...) (dimension 0 indexes samples)."""
        values = values.to(torch.float64)
        n = values.shape[0]
        mean = values.mean(0)
        self.combine(n, mean, (values - mean).pow(2).sum(0))

    def combine(self, n: int, mean: Tensor, m2: Tensor) -> None:
        """Merge a chunk's ``(n, mean, M2)``: ``M2 += M2_b + delta^2 n_a n_b / n``."""
        if n == 0:
            return
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean.clone(), m2.clone()
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.pow(2) * (self.count * n / total)
        self.count = total

    def variance(self, ddof: int = 0) -> Tensor:
        return self.m2 / max(self.count - ddof, 1)


def damage_moments(g: Field, h: Field | None, w: Tensor) -> tuple[int, Tensor, Tensor]:
    """``(n, mean, M2)`` over a chunk of ``d_n = -g_n w + 0.5 h_n w^2`` (float64).

    With factored (Outer) fields the sums are matmuls: ``sum d = -w sum g + 0.5 w^2 sum h``,
    ``sum d^2 = w^2 sum g^2 - w^3 sum g h + 0.25 w^4 sum h^2``; otherwise ``d`` is formed.
    """
    n, w = g.n, w.detach().to(torch.float64)
    if isinstance(g, Outer) and (h is None or isinstance(h, Outer)):
        g = g.to(torch.float64)
        s1, s2 = -w * g.sum(), w.pow(2) * g.square().sum()
        if h is not None:
            h = h.to(torch.float64)
            s1 = s1 + 0.5 * w.pow(2) * h.sum()
            s2 = s2 - w.pow(3) * (g * h).sum() + 0.25 * w.pow(4) * h.square().sum()
        mean = s1 / n
        return n, mean, (s2 - s1 * mean).clamp_min(0)
    d = -g.dense().g.to(torch.float64) * w
    if h is not None:
        d = d + 0.5 * h.dense().g.to(torch.float64) * w.pow(2)
    mean = d.mean(0)
    return n, mean, (d - mean).pow(2).sum(0)


class DamageStats:
    """Welford statistics of the per-sample damage ``d_nq`` of every target tensor.

    ``update(x, y)`` processes ``chunk_size`` samples at a time; ``mean()``, ``sd()`` and
    ``second_moment()`` give the statistics. ``curvature=False`` keeps only the first-order
    term ``-g_nq w_q`` (whose second moment is ``w_q^2 F_qq``).
    """

    what = "per-sample damage statistics"

    def __init__(
        self,
        model,
        targets: Targets,
        loss_fn: LossFn,
        method: str = "rules",
        chunk_size: int = 256,
        curvature: bool = True,
    ) -> None:
        self.backend = PerSampleBackend(model, targets, loss_fn, method)
        self.targets = dict(targets)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.curvature = curvature
        self.reset()

    def reset(self) -> None:
        self.stats_ = {name: Welford() for name in self.targets}
        self.loss_sum_, self.count_ = 0.0, 0

    def update(self, x: Tensor, y: Tensor) -> None:
        weights = {name: getattr(m, t).detach() for name, (m, t) in self.targets.items()}
        size = self.chunk_for(sum(w.numel() for w in weights.values()))
        for start in range(0, int(x.shape[0]), size):
            xs, ys = x[start : start + size], y[start : start + size]
            sample = self.backend(xs, ys, grads=True, ggn=self.curvature, what=self.what)
            for name, g in sample.g.items():
                h = sample.h[name] if sample.h is not None else None
                self.stats_[name].combine(*damage_moments(g, h, weights[name]))
            self.loss_sum_ += sample.loss_sum
            self.count_ += sample.n

    def chunk_for(self, weights: int) -> int:
        """``chunk_size``, or fewer samples under ``--max-memory`` (:mod:`brainsurgeon.memory`):
        per sample, the dense per-sample ``g``, ``h`` and ``d`` of every weight (float64);
        resident, the Welford mean and ``M2`` (float64)."""
        from ..memory import chunk

        return chunk(24 * weights, self.chunk_size, what=self.what, fixed=16 * weights)

    def mean(self) -> dict[str, Tensor]:
        return {n: s.mean for n, s in self.stats_.items()}

    def sd(self) -> dict[str, Tensor]:
        return {n: s.variance().sqrt() for n, s in self.stats_.items()}

    def second_moment(self) -> dict[str, Tensor]:
        """``mean_n d_nq^2 = Var + mean^2``."""
        return {n: s.variance() + s.mean.pow(2) for n, s in self.stats_.items()}
