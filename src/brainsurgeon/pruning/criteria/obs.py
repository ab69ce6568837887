"""``obs``: Optimal Brain Surgeon (Hassibi & Stork 1993) with an inverse curvature.

Score ``w_q^2 / (2 [H^-1]_qq)``; after selection, ``compensate`` moves the surviving weights
by the multi-weight update ``dw = -H^-1[:, Q] (H^-1[Q, Q])^-1 w_Q`` for the removed set ``Q``
(every pruned entry, so old zeros stay zero). ``H = lam I + C`` with ``C`` the Gauss-Newton
matrix (``hessian="ggn"``, the default: per-sample, per-output-factor vectors ``J_n^T s_nk``;
the exact Hessian of a linear model under MSE) or the empirical Fisher (``"fisher"``,
per-sample gradients), inverted by Woodbury; see :mod:`brainsurgeon.curvature.inverse`.

Measured on LeNet-300-100/MNIST at 90% one-shot (benchmarks/pruning_oneshot.py): the
empirical Fisher of a converged net is ~170x smaller than its GGN (the training gradients
vanish, the curvature does not) and barely beats magnitude at any damping; the GGN gains
0.5 points at 90% and 3 at 95% for ~3x the fitting time (``ggn_tol=1e-3`` leaves out the
factor columns of confident samples that carry < 0.1% of their output curvature).

Damping is relative: ``lam = damp * mean(diag C) + abs_damp``, ``damp=0.1`` by default
(best of 1e-3..10 there). The old absolute ``lam = 1e-5`` is ~1000x the mean Fisher diagonal
of that net, which made OBS rank like magnitude. Block size: ``"auto"`` takes the exact
inverse when it fits ``max_memory`` bytes (default 1 GiB), else the largest WoodFisher block
(Singh & Alistarh 2020) that does, logged and kept in ``chosen_block_size_``; an integer
fixes the block, ``None`` demands the exact inverse. Removal in batches with recomputation is
the iterative schedule: each round refits ``H^-1``.
"""

from __future__ import annotations

import logging

import torch

from ...curvature import InverseFisher, WoodburyInverse
from ...curvature.backend import check_method
from ...curvature.context import finish, gather, weights
from ...curvature.inverse import HESSIANS, REL_DAMP, choose_block_size, fit_bytes
from ...errors import ConfigError, check_positive_int
from .base import CompensatingCriterion, SaliencyContext, register_criterion

log = logging.getLogger(__name__)


def _check_block_size(block_size: int | str | None) -> int | str | None:
    if block_size is None or block_size == "auto":
        return block_size
    if isinstance(block_size, str):
        raise ConfigError(
            f"obs block_size must be 'auto', None (exact) or a positive integer, got {block_size!r}"
        )
    return check_positive_int("block_size", block_size)


@register_criterion("obs", "w^2 / (2 [H^-1]_qq) + weight update; exact or WoodFisher blocks")
class OBS(CompensatingCriterion):
    """Options: ``block_size`` ("auto" | None = exact | int), ``max_memory`` (bytes for
    "auto"), ``damp`` (fraction of ``mean(diag C)``), ``abs_damp`` (added absolute ``lam``),
    ``hessian`` (ggn | fisher), ``ggn_tol`` (share of a sample's output curvature that may
    be left out), ``method`` (rules | autograd), ``chunk_size``."""

    needs_data = True
    loss_scale = True

    def __init__(
        self,
        block_size: int | str | None = "auto",
        damp: float = REL_DAMP,
        abs_damp: float = 0.0,
        hessian: str = "ggn",
        ggn_tol: float = 1e-3,
        max_memory: int = 2**30,
        method: str = "rules",
        chunk_size: int = 256,
    ) -> None:
        self.block_size = _check_block_size(block_size)
        if not (float(damp) >= 0 and float(abs_damp) >= 0 and float(damp) + float(abs_damp) > 0):
            raise ConfigError(
                f"obs damping must be >= 0 and not all zero, got damp={damp!r} (x mean diag) "
                f"and abs_damp={abs_damp!r}; e.g. damp={REL_DAMP:g}"
            )
        if hessian not in HESSIANS:
            raise ConfigError(f"obs hessian must be one of {list(HESSIANS)}, got {hessian!r}")
        if not 0 <= float(ggn_tol) < 1:
            raise ConfigError(f"obs ggn_tol must lie in [0, 1) (0 = exact GGN), got {ggn_tol!r}")
        self.damp, self.abs_damp, self.hessian = float(damp), float(abs_damp), hessian
        self.ggn_tol = float(ggn_tol)
        self.max_memory = check_positive_int("max_memory", max_memory)
        self.method = check_method(method)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.chosen_block_size_: int | None = None

    def _block_size(self, ctx: SaliencyContext) -> int | None:
        shapes = {n: ctx.tensor(n).shape for n in ctx.targets}
        total = sum(s.numel() for s in shapes.values())
        if self.block_size == "auto":
            block = choose_block_size(shapes, self.max_memory)
            if block is not None:
                log.info(
                    "obs: the exact inverse of %s weights needs %.1f GiB > max_memory %.2f GiB; "
                    "using WoodFisher blocks of %d",
                    f"{total:,}",
                    fit_bytes(shapes, None) / 2**30,
                    self.max_memory / 2**30,
                    block,
                )
            return block
        if self.block_size is None and fit_bytes(shapes, None) > self.max_memory:
            raise ConfigError(
                f"obs with the exact inverse Hessian needs a {total:,} x {total:,} matrix "
                f"({fit_bytes(shapes, None) / 2**30:.1f} GiB with its statistics), more than "
                f"max_memory={self.max_memory:,} bytes; use block_size='auto' (the largest "
                "WoodFisher blocks that fit), block_size=128, or raise max_memory"
            )
        return self.block_size

    def statistics(self, ctx: SaliencyContext) -> WoodburyInverse:
        """The fitted ``H^-1`` over ``ctx.data`` (shared by ``score`` and ``compensate``);
        ``chosen_block_size_`` records the block size used (None: exact)."""
        data = ctx.require_data(self.name)
        self.chosen_block_size_ = self._block_size(ctx)
        acc = InverseFisher(
            ctx.model,
            ctx.targets,
            ctx.loss_fn,
            len(data),
            self.abs_damp,
            self.chosen_block_size_,
            self.method,
            self.chunk_size,
            rel_damp=self.damp,
            hessian=self.hessian,
            ggn_tol=self.ggn_tol,
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
