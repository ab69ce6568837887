"""``obd``: Optimal Brain Damage, ``0.5 H_qq w_q^2`` (LeCun, Denker & Solla 1989).

``hessian`` picks the diagonal: ``exact`` (autograd, one Hessian-vector product per weight:
small nets), ``ggn`` (the Gauss-Newton / "Levenberg-Marquardt" diagonal by layer rules;
equal to the exact one for ReLU nets with cross entropy), ``fisher`` (empirical Fisher
``mean g_n^2``) or ``hutchinson`` (``E[v * Hv]``, ``probes`` Rademacher vectors; unbiased but
too noisy to rank single weights with few probes).
"""

from __future__ import annotations

import torch

from ...curvature import ExactDiagonal, GGNDiagonal, GradientStats, HutchinsonDiagonal
from ...curvature.backend import check_method
from ...curvature.context import finish, gather, weights
from ...errors import ConfigError, check_positive_int
from .base import Criterion, SaliencyContext, register_criterion

HESSIANS = ("exact", "ggn", "fisher", "hutchinson")


@register_criterion("obd", "0.5 * H_qq * w_q^2 (hessian=exact|ggn|fisher|hutchinson): LeCun 1989")
class OBD(Criterion):
    """Options: ``hessian``, ``probes`` (hutchinson), ``method`` (rules | autograd, for
    ggn/fisher), ``max_weights`` (refuse ``exact`` above this many weights)."""

    needs_data = True
    loss_scale = True

    def __init__(
        self,
        hessian: str = "ggn",
        probes: int = 20,
        method: str = "rules",
        max_weights: int = 50_000,
    ) -> None:
        if hessian not in HESSIANS:
            raise ConfigError(f"obd hessian must be one of {list(HESSIANS)}, got {hessian!r}")
        self.hessian, self.method = hessian, check_method(method)
        self.probes = check_positive_int("probes", probes)
        self.max_weights = check_positive_int("max_weights", max_weights)

    def statistics(self, ctx: SaliencyContext) -> dict[str, torch.Tensor]:
        """``H_qq`` of the mean loss over ``ctx.data`` for every target."""
        ctx.require_data(self.name)
        args = (ctx.model, ctx.targets, ctx.loss_fn)
        if self.hessian == "exact":
            total = sum(ctx.tensor(n).numel() for n in ctx.targets)
            if total > self.max_weights:
                raise ConfigError(
                    f"obd hessian='exact' needs one Hessian-vector product per weight: "
                    f"{total:,} weights > max_weights={self.max_weights:,}; use hessian='ggn' "
                    "(equal to the exact diagonal for ReLU nets with cross entropy)"
                )
            acc = ExactDiagonal(*args)
        elif self.hessian == "ggn":
            acc = GGNDiagonal(*args, method=self.method)
        elif self.hessian == "fisher":
            acc = GradientStats(*args, method=self.method)
        else:
            acc = HutchinsonDiagonal(*args, probes=self.probes, seed=ctx.seed)
        return gather(acc, ctx, self.name).result()

    def score(
        self, ctx: SaliencyContext, stats: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        diag, w = stats, weights(ctx)
        return finish({n: 0.5 * diag[n] * w[n].pow(2) for n in w}, ctx)
