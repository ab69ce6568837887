"""``dropout-regression``: regress the measured loss of randomly masked models on the mask bits.

The OBD-SD notes' "next step" idea, with no Taylor approximation: draw ``masks`` random keep
masks ``m_b`` (each unit kept with probability ``keep``), measure the loss ``L_b`` of each
masked model on the calibration data, and fit ``L_b ~ c_0 + sum_q c_q r_bq`` with removal bits
``r_bq = 1 - m_bq``. The coefficient ``c_q`` estimates the loss increase of removing unit ``q``
(a weight, or with ``unit="neuron"`` an output row of a tensor) among the others.

Solvers: ``lstsq`` (ridge-regularised least squares on the accumulated normal equations,
``(R^T R + ridge N I) c = R^T L``, needs ``masks > units``) and ``marginal`` (difference of the
conditional means ``E[L | r_q = 1] - E[L | r_q = 0]``: the least-squares coefficient for an
orthogonal design, which independent Bernoulli bits approach as ``masks`` grows; O(units)
memory). ``auto`` uses ``lstsq`` up to 4,096 units when there are more masks than units.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError, NumericalError
from ..damage import (
    calibration_batches,
    chunk_size,
    mean_loss,
    plain_copy,
    sample_entries,
    variant_losses,
)
from .base import Criterion, SaliencyContext, register_criterion

UNITS = ("weight", "neuron")
SOLVERS = ("auto", "lstsq", "marginal")
MAX_LSTSQ_UNITS = 4096


@register_criterion(
    "dropout-regression", "least-squares fit of the measured loss of random masks on the mask bits"
)
class DropoutRegression(Criterion):
    """Options: ``masks`` (number of random masks), ``keep`` (keep probability p), ``unit``
    (``weight`` | ``neuron``), ``solver`` (``auto`` | ``lstsq`` | ``marginal``), ``ridge``."""

    needs_data = True
    loss_scale = True

    def __init__(
        self,
        masks: int = 2000,
        keep: float = 0.9,
        unit: str = "weight",
        solver: str = "auto",
        ridge: float = 1e-6,
    ) -> None:
        if isinstance(masks, bool) or int(masks) < 2:
            raise ConfigError(f"dropout-regression masks must be an integer >= 2, got {masks!r}")
        if not 0.0 < float(keep) < 1.0:
            raise ConfigError(f"dropout-regression keep must lie in (0, 1), got {keep!r}; e.g. 0.9")
        if unit not in UNITS:
            raise ConfigError(f"dropout-regression unit must be one of {list(UNITS)}, got {unit!r}")
        if solver not in SOLVERS:
            raise ConfigError(
                f"dropout-regression solver must be one of {list(SOLVERS)}, got {solver!r}"
            )
        if float(ridge) < 0:
            raise ConfigError(f"dropout-regression ridge must be >= 0, got {ridge!r}")
        self.masks, self.keep, self.unit = int(masks), float(keep), unit
        self.solver, self.ridge = solver, float(ridge)

    def score(self, ctx: SaliencyContext, stats: object = None) -> dict[str, torch.Tensor]:
        ctx.require_data("dropout-regression")
        model = plain_copy(ctx.model).to(ctx.device)
        batches = calibration_batches(ctx, next(model.parameters()).dtype)
        mean_loss(model, batches, ctx.loss_fn)  # refuses a NaN/inf loss before any work
        units = self._units(ctx)
        n_units = sum(len(u) for u in units.values())
        solver = self.solver
        if solver == "auto":
            solver = "lstsq" if n_units < self.masks and n_units <= MAX_LSTSQ_UNITS else "marginal"
        stats = _Stats(n_units, lstsq=solver == "lstsq")
        g = torch.Generator().manual_seed(ctx.seed * 7919 + 17)
        weights = {n: model.get_parameter(n).detach() for n in ctx.targets}
        size = chunk_size(sum(w.numel() for w in weights.values()), cap=64)
        for start in range(0, self.masks, size):
            count = min(size, self.masks - start)
            keep_bits = torch.rand(count, n_units, generator=g) < self.keep
            variants = self._variants(weights, units, keep_bits.to(ctx.device))
            losses = variant_losses(model, variants, batches, ctx.loss_fn).cpu()
            if not torch.isfinite(losses).all():
                raise NumericalError(
                    "a randomly masked model gave a NaN or infinite loss; "
                    "raise keep (fewer units dropped) or check the model"
                )
            stats.update((~keep_bits).double(), losses)
        coef = stats.solve(self.ridge)
        return self._spread(ctx, units, coef)

    def _units(self, ctx: SaliencyContext) -> dict[str, torch.Tensor]:
        """Per tensor: flat indices of its units (alive weights, or rows)."""
        if self.unit == "weight":
            return sample_entries(ctx, None, seed=0)
        return {n: torch.arange(ctx.tensor(n).shape[0]) for n in ctx.targets}

    def _variants(self, weights, units, keep_bits) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        count = keep_bits.shape[0]
        for name, w in weights.items():
            idx = units[name].to(w.device)
            bits = keep_bits[:, start : start + len(idx)].to(w.dtype)
            start += len(idx)
            if self.unit == "weight":
                mask = torch.ones(count, w.numel(), dtype=w.dtype, device=w.device)
                mask[:, idx] = bits
                out[name] = w.unsqueeze(0) * mask.view(count, *w.shape)
            else:
                out[name] = w.unsqueeze(0) * bits.view(count, -1, *([1] * (w.dim() - 1)))
        return out

    def _spread(self, ctx, units, coef: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, idx in units.items():
            shape = ctx.tensor(name).shape
            c = coef[start : start + len(idx)]
            start += len(idx)
            if self.unit == "weight":
                flat = torch.zeros(shape.numel(), dtype=torch.float64)
                flat[idx] = c
                out[name] = flat.view(shape)
            else:
                out[name] = c.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
        return out


class _Stats:
    """Streaming sufficient statistics of the regression (O(units) or O(units^2) memory)."""

    def __init__(self, n_units: int, *, lstsq: bool) -> None:
        self.n, self.sum_l = 0, 0.0
        self.sum_rl = torch.zeros(n_units, dtype=torch.float64)
        self.sum_r = torch.zeros(n_units, dtype=torch.float64)
        self.gram = torch.zeros(n_units + 1, n_units + 1, dtype=torch.float64) if lstsq else None

    def update(self, removed: torch.Tensor, losses: torch.Tensor) -> None:
        """``removed``: (B, U) 0/1; ``losses``: (B,)."""
        self.n += len(losses)
        self.sum_l += float(losses.sum())
        self.sum_rl += removed.T @ losses
        self.sum_r += removed.sum(0)
        if self.gram is not None:
            design = torch.cat([torch.ones(len(losses), 1, dtype=torch.float64), removed], 1)
            self.gram += design.T @ design

    def solve(self, ridge: float) -> torch.Tensor:
        if self.gram is None:
            n1 = self.sum_r.clamp(min=1.0)
            n0 = (self.n - self.sum_r).clamp(min=1.0)
            return self.sum_rl / n1 - (self.sum_l - self.sum_rl) / n0
        rhs = torch.cat([torch.tensor([self.sum_l], dtype=torch.float64), self.sum_rl])
        reg = torch.full((len(rhs),), ridge * self.n, dtype=torch.float64)
        reg[0] = 0.0
        sol = torch.linalg.lstsq(self.gram + torch.diag(reg), rhs.unsqueeze(1)).solution
        return sol[1:, 0]
