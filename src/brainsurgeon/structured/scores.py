"""Unit criteria: one importance score per unit of a :class:`Group` (higher = more important).

A criterion scores, a selector (:func:`brainsurgeon.structured.unit_selection.select_units`)
chooses, a mask applies. Every criterion collects its statistics first
(``statistics(model, group, calib)``, one pass over the calibration data) and scores with a
pure function of them (``from_stats``); ``score(model, group, data)`` does both::

    crit = make_unit_criterion("obd-sd", statistic="ucb", k=1.0)
    s = crit.score(model, group, data)               # (group.units,) float64
    scores = unit_scores(model, groups, "pooled:magnitude", pool="l2")

Criteria (``UNIT_CRITERIA.describe()``): ``l1``/``l2`` filter norms (Li et al. 2017),
``pooled`` element scores, ``activation``, ``apoz`` (Hu et al. 2016), ``taylor`` (Molchanov
et al. 2017), ``obd`` / ``obd-sd`` (neuron-level OBD and the seed notes' spread of its
per-sample damage), ``true-damage``, ``dropout-regression``, ``group-obs`` (structured
layer-wise OBS, with :meth:`GroupOBS.compensate`) and ``random``. Their activation
statistics are in :mod:`.unit_stats`; the OBS algebra in :mod:`.group_obs`.
"""

from __future__ import annotations

import inspect
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..data.core import DataLike, Dataset, as_dataset
from ..errors import ConfigError
from ..losses import LossFn, LossLike, resolve_loss
from ..registry import Registry
from ..utils import module_device, preserved_modes
from .groups import Group, Slice, tensor_of


@dataclass(frozen=True)
class Calibration:
    """The samples a criterion learns from, as batches on the model's device and dtype."""

    data: Dataset
    loss_fn: LossFn
    batch_size: int = 256

    def dataset_for(self, model: nn.Module) -> Dataset:
        """The samples with float inputs cast to the model's dtype."""
        p = next(model.parameters())
        x = self.data.x
        return Dataset(x.to(p.dtype) if x.is_floating_point() else x, self.data.y)

    def batches(self, model: nn.Module) -> list[tuple[Tensor, Tensor]]:
        p = next(model.parameters())
        out = []
        for x, y in self.data.batches(self.batch_size, device=module_device(model)):
            out.append((x.to(p.dtype) if x.is_floating_point() else x, y))
        return out


class UnitCriterion:
    """Scores the units of one group. Subclasses set ``needs_data``, implement
    ``from_stats(model, group, stats)`` and, when they learn from data,
    ``statistics(model, group, calib)``. Constructor keywords are the options."""

    name: ClassVar[str] = ""
    needs_data: bool = True

    def statistics(self, model: nn.Module, group: Group, calib: Calibration | None) -> Any:
        """What ``from_stats`` needs, collected once (None: nothing)."""
        return None

    def from_stats(self, model: nn.Module, group: Group, stats: Any) -> Tensor:
        raise NotImplementedError

    def score(
        self,
        model: nn.Module,
        group: Group,
        data: DataLike | None = None,
        *,
        loss: LossLike = None,
        batch_size: int = 256,
        stats: Any = None,
    ) -> Tensor:
        """Importance of each unit, (group.units,) float64; the model is used in eval mode
        and left unchanged."""
        with preserved_modes(model, "eval"):
            if stats is None:
                stats = self.statistics(model, group, self.calibration(data, loss, batch_size))
            out = self.from_stats(model, group, stats)
        if out.shape != (group.units,):
            raise RuntimeError(f"{self.name} gave shape {tuple(out.shape)} for {group.name}")
        return out.detach().double().cpu()

    def calibration(self, data: DataLike | None, loss: LossLike, bs: int) -> Calibration | None:
        if not self.needs_data:
            return None
        if data is None or len(as_dataset(data)) == 0:
            label = getattr(self, "label", self.name)
            raise ConfigError(
                f"unit criterion {label!r} needs calibration data; pass data=... "
                "(e.g. a subset of the training split), or use a data-free criterion "
                "(l1, l2, pooled:magnitude, random)"
            )
        dataset = as_dataset(data, "train")
        return Calibration(dataset, resolve_loss(loss), bs)

    def options(self) -> dict[str, Any]:
        return dict(getattr(self, "_options", {}))


UNIT_CRITERIA: Registry[type[UnitCriterion]] = Registry("unit criterion")


def register_unit_criterion(name: str, description: str):
    """Class decorator registering a :class:`UnitCriterion` under ``name``."""

    def deco(cls: type[UnitCriterion]) -> type[UnitCriterion]:
        if not issubclass(cls, UnitCriterion) or cls.from_stats is UnitCriterion.from_stats:
            raise TypeError(f"unit criterion {name!r} must subclass UnitCriterion")
        cls.name = name
        return UNIT_CRITERIA.register(name, description)(cls)

    return deco


def make_unit_criterion(spec: str, **options: Any) -> UnitCriterion:
    """Instantiate ``spec`` (a registered name, or ``pooled:<element criterion>``);
    unknown options fail with the valid ones."""
    name, _, element = spec.partition(":")
    if element:
        if name != "pooled":
            raise ConfigError(f"only 'pooled:<element criterion>' takes a ':', got {spec!r}")
        options = {"element": element, **options}
    cls = UNIT_CRITERIA.get(name)
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"unit criterion {name!r} has no option(s) {unknown}; valid: {valid or 'none'}"
        )
    crit = cls(**options)
    crit._options = dict(options)
    return crit


def unit_scores(
    model: nn.Module,
    groups: list[Group] | tuple[Group, ...],
    criterion: str,
    data: DataLike | None = None,
    *,
    loss: LossLike = None,
    batch_size: int = 256,
    **options: Any,
) -> dict[str, Tensor]:
    """``{group.name: importance (units,)}`` of every group by one criterion."""
    crit = make_unit_criterion(criterion, **options)
    return {g.name: crit.score(model, g, data, loss=loss, batch_size=batch_size) for g in groups}


# ---- data-free: norms, pooled element scores, random -----------------------------------

SLICE_SETS = ("producers", "consumers", "all")


def _chosen_slices(group: Group, slices: str) -> tuple[Slice, ...]:
    return {"producers": group.producers, "consumers": group.consumers, "all": group.slices()}[
        slices
    ]


def per_unit(t: Tensor, s: Slice, units: int) -> Tensor:
    """Tensor ``t``'s entries of each unit along ``s.axis``: (units, entries)."""
    part = t.narrow(s.axis, s.offset, units * s.unit_size).movedim(s.axis, 0)
    return part.reshape(units, -1)


def _is_parameter(model: nn.Module, s: Slice) -> bool:
    module = model.get_submodule(s.module)
    return s.tensor not in dict(module.named_buffers(recurse=False))


def gather_entries(
    model: nn.Module, group: Group, slices: str, include_bias: bool, values=None
) -> Tensor:
    """(units, entries) of the chosen slices' parameters (``values``: name -> tensor to read
    instead of the model's, e.g. element scores)."""
    if slices not in SLICE_SETS:
        raise ConfigError(f"slices must be one of {list(SLICE_SETS)}, got {slices!r}")
    parts = []
    for s in _chosen_slices(group, slices):
        if not _is_parameter(model, s) or (s.tensor.endswith("bias") and not include_bias):
            continue
        t = tensor_of(model, s) if values is None else values[f"{s.module}.{s.tensor}"]
        parts.append(per_unit(t.detach().double().cpu(), s, group.units))
    if not parts:
        raise ConfigError(f"group {group.name} has no {slices} parameter slices to score")
    return torch.cat(parts, 1)


@register_unit_criterion("l1", "L1 norm of each unit's producer weights (Li et al. 2017)")
class L1Norm(UnitCriterion):
    """``sum |w|`` over the unit's entries of the chosen ``slices`` (biases with
    ``include_bias``)."""

    needs_data = False
    order: ClassVar[int] = 1

    def __init__(self, slices: str = "producers", include_bias: bool = False) -> None:
        self.slices, self.include_bias = slices, include_bias

    def from_stats(self, model, group, stats) -> Tensor:
        entries = gather_entries(model, group, self.slices, self.include_bias)
        return torch.linalg.vector_norm(entries, ord=self.order, dim=1)


@register_unit_criterion("l2", "L2 norm of each unit's producer weights (row / filter norm)")
class L2Norm(L1Norm):
    """``sqrt(sum w^2)`` over the unit's entries of the chosen ``slices``."""

    order: ClassVar[int] = 2


POOLS = ("sum", "mean", "l2", "max")


@register_unit_criterion(
    "pooled", "an element criterion's scores pooled (sum, mean, l2, max) over each unit"
)
class Pooled(UnitCriterion):
    """Any :data:`brainsurgeon.pruning.CRITERIA` score (predicted damage per entry) pooled
    over the unit's entries in the chosen ``slices``. ``element_options`` go to it."""

    def __init__(
        self,
        element: str = "magnitude",
        pool: str = "sum",
        slices: str = "producers",
        include_bias: bool = True,
        element_options: dict[str, Any] | None = None,
    ) -> None:
        from ..pruning.criteria import make_criterion

        if pool not in POOLS:
            raise ConfigError(f"pooled pool must be one of {list(POOLS)}, got {pool!r}")
        if slices not in SLICE_SETS:
            raise ConfigError(f"slices must be one of {list(SLICE_SETS)}, got {slices!r}")
        self.element = make_criterion(element, **(element_options or {}))
        self.label = f"pooled:{element}"
        self.pool, self.slices, self.include_bias = pool, slices, include_bias
        self.needs_data = self.element.needs_data

    def statistics(self, model, group, calib) -> dict[str, Tensor]:
        from ..pruning.criteria import SaliencyContext

        targets = {}
        for s in _chosen_slices(group, self.slices):
            if _is_parameter(model, s):
                targets[f"{s.module}.{s.tensor}"] = (model.get_submodule(s.module), s.tensor)
        ctx = SaliencyContext(
            model=model,
            targets=targets,
            data=None if calib is None else calib.dataset_for(model),
            loss_fn=calib.loss_fn if calib else nn.functional.cross_entropy,
            batch_size=calib.batch_size if calib else 256,
            device=module_device(model),
        )
        return self.element.scores(ctx)

    def from_stats(self, model, group, stats) -> Tensor:
        e = gather_entries(model, group, self.slices, self.include_bias, values=stats)
        if self.pool == "sum":
            return e.sum(1)
        if self.pool == "mean":
            return e.mean(1)
        if self.pool == "l2":
            return torch.linalg.vector_norm(e, dim=1)
        return e.max(1).values


@register_unit_criterion("random", "uniform random scores (seeded): the honest baseline")
class RandomUnits(UnitCriterion):
    """Uniform scores from ``seed`` and the group's name (distinct per group)."""

    needs_data = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def from_stats(self, model, group, stats) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(group.name.encode()))
        return torch.rand(group.units, generator=g, dtype=torch.float64)


from . import unit_criteria as _unit_criteria  # noqa: E402,F401  (registers the data criteria)

__all__ = [
    "UNIT_CRITERIA",
    "Calibration",
    "UnitCriterion",
    "make_unit_criterion",
    "register_unit_criterion",
    "unit_scores",
]
