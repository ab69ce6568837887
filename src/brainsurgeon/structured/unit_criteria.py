"""The data-driven unit criteria: functions of :mod:`.unit_stats` / :mod:`.group_obs`
statistics. Importance is "higher = more important"; the loss-scale ones (``obd`` mean,
``true-damage``, ``dropout-regression``, ``group-obs``) estimate a loss increase."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError, NumericalError
from .group_obs import InputHessians, damped_inverse, unit_costs, weight_matrix, write_compensation
from .groups import Group
from .scores import Calibration, UnitCriterion, register_unit_criterion
from .unit_stats import ActivationStats, GateDamage, gate_losses


class _ActivationBased(UnitCriterion):
    def statistics(self, model, group, calib: Calibration) -> ActivationStats:
        acc = ActivationStats(group)
        for x, _ in calib.batches(model):
            acc.update(model, x)
        return acc


@register_unit_criterion("activation", "mean |a| of the unit's activation over the samples")
class MeanActivation(_ActivationBased):
    """``mean_{n, i in u, positions} |a_ni|`` of what the consumers read."""

    def from_stats(self, model, group, stats: ActivationStats) -> Tensor:
        return stats.mean_abs()


@register_unit_criterion("apoz", "1 - average percentage of zero activations (Hu et al. 2016)")
class APoZ(_ActivationBased):
    """``1 - APoZ``, APoZ the fraction of exact zeros in the unit's activation (post-ReLU)."""

    def from_stats(self, model, group, stats: ActivationStats) -> Tensor:
        return 1.0 - stats.apoz()


class _GateBased(UnitCriterion):
    second_order: ClassVar[bool] = True

    def statistics(self, model, group, calib: Calibration) -> GateDamage:
        acc = GateDamage(group, calib.loss_fn, second_order=self.second_order)
        for x, y in calib.batches(model):
            acc.update(model, x, y)
        return acc


@register_unit_criterion("taylor", "mean over samples of |a . dL/da| per unit (Molchanov 2017)")
class Taylor(_GateBased):
    """``mean_n |sum_{i in u, positions} a_ni dL_n/da_ni|``: Molchanov et al. 2017's
    first-order Taylor criterion (absolute value per sample of the unit's summed product,
    the sum over positions instead of their mean: a constant factor per group)."""

    second_order = False

    def from_stats(self, model, group, stats: GateDamage) -> Tensor:
        return stats.taylor()


@register_unit_criterion("obd", "neuron-level OBD: mean of d_n = -g_n.a_n + 0.5 a_n^T H_n a_n")
class UnitOBD(_GateBased):
    """Mean over samples of the second-order damage of zeroing the unit's activation,
    ``d_n = -g_n . a_n + 0.5 a_n^T H_n a_n`` (``g = dL_n/da``, ``H_n`` the Gauss-Newton on
    the unit's block of the activation); ``first_order=False`` drops ``-g . a`` (classic OBD
    assumes a minimum: ``0.5 mean a^T H a``, always >= 0). LeCun et al. 1989, per unit."""

    def __init__(self, first_order: bool = True) -> None:
        self.first_order = bool(first_order)

    def from_stats(self, model, group, stats: GateDamage) -> Tensor:
        if self.first_order:
            return stats.mean()
        return stats.mean() + stats.mean_g()


STATISTICS = ("sd", "mean", "ucb", "cv")


@register_unit_criterion("obd-sd", "spread (sd, mean, |mean|+k*sd, sd/|mean|) of unit OBD damage")
class UnitOBDSD(_GateBased):
    """Statistics over samples of the per-sample unit damage ``d_n`` of :class:`UnitOBD`
    (the seed notes' OBD-SD, per unit): ``sd`` (population standard deviation), ``mean``,
    ``ucb = |mean| + k sd``, ``cv = sd / |mean|`` (0 where both vanish)."""

    def __init__(self, statistic: str = "sd", k: float = 1.0) -> None:
        if statistic not in STATISTICS:
            raise ConfigError(
                f"obd-sd statistic must be one of {list(STATISTICS)}, got {statistic!r}"
            )
        if not float(k) >= 0:
            raise ConfigError(f"obd-sd k must be >= 0 (ucb = |mean| + k * sd), got {k!r}")
        self.statistic, self.k = statistic, float(k)

    def from_stats(self, model, group, stats: GateDamage) -> Tensor:
        m, s = stats.mean(), stats.sd()
        if self.statistic == "sd":
            return s
        if self.statistic == "mean":
            return m
        if self.statistic == "ucb":
            return m.abs() + self.k * s
        return torch.where(s == 0, torch.zeros_like(s), s / m.abs())


def _float64_copy(model: nn.Module, dtype: str) -> nn.Module:
    from ..pruning.damage import plain_copy

    if dtype not in ("float64", "float32"):
        raise ConfigError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    return plain_copy(model, getattr(torch, dtype))


@register_unit_criterion("true-damage", "measured L(unit zeroed) - L per unit (brute force)")
class UnitTrueDamage(UnitCriterion):
    """``L(consumers read 0 for u) - L`` over the calibration data, one forward per unit
    (batched by repeating each batch), in ``dtype`` (float64 by default)."""

    def __init__(self, dtype: str = "float64") -> None:
        self.dtype = dtype

    def statistics(self, model, group, calib: Calibration) -> Tensor:
        copy = _float64_copy(model, self.dtype)
        gates = torch.cat([torch.ones(1, group.units), 1.0 - torch.eye(group.units)])
        return gate_losses(copy, group, gates.double(), calib.batches(copy), calib.loss_fn)

    def from_stats(self, model, group, stats: Tensor) -> Tensor:
        return stats[1:] - stats[0]


@register_unit_criterion(
    "dropout-regression", "least-squares fit of the loss of random unit-dropout masks"
)
class UnitDropoutRegression(UnitCriterion):
    """Draw ``masks`` random keep-masks (each unit kept with probability ``keep``), measure
    the loss ``L_b`` of each, fit ``L_b ~ c_0 + sum_u c_u r_bu`` (removal bits ``r = 1 - m``)
    by ridge least squares, ``(R^T R + ridge B I) c = R^T L``: ``c_u`` estimates the loss
    increase of removing ``u`` among the others (the element criterion's convention), and is
    the importance. No Taylor approximation; needs ``masks > units`` for a determined fit."""

    def __init__(
        self, masks: int = 1000, keep: float = 0.9, ridge: float = 1e-6, seed: int = 0
    ) -> None:
        if isinstance(masks, bool) or int(masks) < 2:
            raise ConfigError(f"dropout-regression masks must be an integer >= 2, got {masks!r}")
        if not 0.0 < float(keep) < 1.0:
            raise ConfigError(f"dropout-regression keep must lie in (0, 1), got {keep!r}; e.g. 0.9")
        self.masks, self.keep, self.ridge, self.seed = int(masks), float(keep), float(ridge), seed

    def statistics(self, model, group, calib: Calibration) -> tuple[Tensor, Tensor]:
        copy = _float64_copy(model, "float64")
        g = torch.Generator().manual_seed(int(self.seed) * 7919 + 17)
        keep = (torch.rand(self.masks, group.units, generator=g) < self.keep).double()
        losses = gate_losses(copy, group, keep, calib.batches(copy), calib.loss_fn)
        if not torch.isfinite(losses).all():
            raise NumericalError("a unit-dropout mask gave a NaN or infinite loss; raise keep")
        return 1.0 - keep, losses

    def from_stats(self, model, group, stats: tuple[Tensor, Tensor]) -> Tensor:
        removed, losses = stats
        design = torch.cat([torch.ones(len(losses), 1, dtype=torch.float64), removed], 1)
        reg = torch.full((design.shape[1],), self.ridge * len(losses), dtype=torch.float64)
        reg[0] = 0.0
        gram = design.T @ design + torch.diag(reg)
        sol = torch.linalg.lstsq(gram, (design.T @ losses)[:, None]).solution
        return sol[1:, 0]


@register_unit_criterion("group-obs", "structured layer-wise OBS cost on the consumers' inputs")
class GroupOBS(UnitCriterion):
    """Per unit, the least reconstruction error of the consumers' outputs once the unit's
    input columns are removed and the rest re-fitted: ``0.5 sum_r W[r, u]^2 / [H^-1]_uu``
    (block form for ``unit_size`` > 1), summed over consumers; ``H = 2 X^T X`` (+ ``damp``
    times its mean diagonal; ``bias``: the bias joins the fit). See :mod:`.group_obs`.
    :meth:`compensate` applies the optimal update for a chosen keep-set."""

    def __init__(self, damp: float = 0.01, bias: bool = True) -> None:
        if not float(damp) >= 0:
            raise ConfigError(f"group-obs damp must be >= 0 (e.g. 0.01), got {damp!r}")
        self.damp, self.bias = float(damp), bool(bias)

    def statistics(self, model, group, calib: Calibration) -> InputHessians:
        acc = InputHessians(model, group, bias=self.bias)
        for x, _ in calib.batches(model):
            acc.update(model, x)
        return acc

    def from_stats(self, model, group, stats: InputHessians) -> Tensor:
        total = torch.zeros(group.units, dtype=torch.float64)
        for s in group.consumers:
            h = stats.hessians_[s.module]
            w = weight_matrix(
                model, s.module, h.shape[0] > model.get_submodule(s.module).in_features
            )
            total += unit_costs(w, damped_inverse(h, self.damp), s, group.units)
        return total

    def compensate(
        self,
        model: nn.Module,
        group: Group,
        keep: Tensor,
        data: Any = None,
        *,
        loss: Any = None,
        batch_size: int = 256,
        stats: InputHessians | None = None,
    ) -> dict[str, Tensor]:
        """Write the OBS update for the units ``keep`` (bool (U,)) drops into the consumers'
        weights (and biases with ``bias``), in place; returns ``{consumer.weight: new W}``.
        The removed columns become exactly 0; the producers are left to the mask."""
        if stats is None:
            with torch.no_grad():
                stats = self.statistics(model, group, self.calibration(data, loss, batch_size))
        return write_compensation(model, group, keep, stats, self.damp)
