"""``obs``: Optimal Brain Surgeon with the inverse empirical Fisher (Hassibi & Stork 1993).

Score ``w_q^2 / (2 [H^-1]_qq)``; after selection, ``compensate`` moves the surviving weights
by the multi-weight update ``dw = -H^-1[:, Q] (H^-1[Q, Q])^-1 w_Q`` for the removed set ``Q``
(every pruned entry, so old zeros stay zero). ``H^-1`` is built by the Woodbury recursion
over per-sample gradients from ``I / damp``: exact (one P x P matrix, up to ``max_weights``)
or, with ``block_size``, block-diagonal per tensor (WoodFisher, Singh & Alistarh 2020).
Removal in batches with recomputation is the iterative schedule: each round refits ``H^-1``.
"""

from __future__ import annotations

import torch

from ...curvature import InverseFisher, WoodburyInverse, inverse_bytes
from ...curvature.backend import check_method
from ...curvature.context import finish, gather, weights
from ...errors import ConfigError, check_positive_int
from .base import CompensatingCriterion, SaliencyContext, register_criterion


@register_criterion("obs", "w^2 / (2 [H^-1]_qq) + weight update; exact or WoodFisher blocks")
class OBS(CompensatingCriterion):
    """Options: ``block_size`` (None = exact inverse), ``damp`` (the ``alpha`` of ``I/alpha``),
    ``max_weights`` (largest exact inverse), ``method`` (rules | autograd), ``chunk_size``."""

    needs_data = True
    loss_scale = True

    def __init__(
        self,
        block_size: int | None = None,
        damp: float = 1e-5,
        max_weights: int = 20_000,
        method: str = "rules",
        chunk_size: int = 256,
    ) -> None:
        self.block_size = (
            None if block_size is None else check_positive_int("block_size", block_size)
        )
        if not float(damp) > 0:
            raise ConfigError(f"obs damp must be > 0 (e.g. 1e-5), got {damp!r}")
        self.damp, self.method = float(damp), check_method(method)
        self.max_weights = check_positive_int("max_weights", max_weights)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)

    def _check_size(self, ctx: SaliencyContext) -> None:
        total = sum(ctx.tensor(n).numel() for n in ctx.targets)
        if self.block_size is None and total > self.max_weights:
            gb = inverse_bytes(total, None) / 2**30
            raise ConfigError(
                f"obs with the exact inverse Hessian needs a {total:,} x {total:,} matrix "
                f"({gb:.1f} GiB) for {total:,} weights, more than max_weights="
                f"{self.max_weights:,}; use block_size=128 (WoodFisher block-diagonal inverse) "
                "or prune fewer layers"
            )

    def statistics(self, ctx: SaliencyContext) -> WoodburyInverse:
        """The fitted ``H^-1`` over ``ctx.data`` (shared by ``score`` and ``compensate``)."""
        self._check_size(ctx)
        data = ctx.require_data(self.name)
        acc = InverseFisher(
            ctx.model,
            ctx.targets,
            ctx.loss_fn,
            len(data),
            self.damp,
            self.block_size,
            self.method,
            self.chunk_size,
        )
        return gather(acc, ctx, self.name).result()

    def score(self, ctx: SaliencyContext, stats: WoodburyInverse) -> dict[str, torch.Tensor]:
        diag, w = stats.diagonal(), weights(ctx)
        return finish({n: w[n].double().pow(2) / (2 * diag[n]) for n in w}, ctx)

    def compensate(
        self, ctx: SaliencyContext, keep: dict[str, torch.Tensor], *, stats=None
    ) -> dict[str, torch.Tensor]:
        inverse = self.statistics(ctx) if stats is None else stats
        w = weights(ctx)
        full = {}
        for name, t in w.items():
            k = keep.get(name, torch.ones_like(t, dtype=torch.bool)).to(t.device, torch.bool)
            if name in ctx.masks:
                k = k & ctx.masks[name].to(t.device, torch.bool)
            full[name] = k
        new = inverse.remove(w, full)
        return {n: new[n].to(dtype=w[n].dtype, device=w[n].device) for n in w}
