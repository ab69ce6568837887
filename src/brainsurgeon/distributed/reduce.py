"""``reduce(acc)``: merge an accumulator's per-rank statistics into the global ones, once.

Every statistic is kept *unnormalised* with its sample count, so merging is exact: sums
add, counts add, and the normalisation (``/ N``) happens when the result is read. Never an
average of per-rank means (GPTQModel #2979: averaging per-rank normalised Hessians without
the counts is wrong when the ranks saw different numbers of samples).

* any object following the accumulator convention (``count_`` and ``*sums_`` dicts,
  ``*_sum_`` scalars: :class:`~brainsurgeon.curvature.diagonal.Accumulator` and every
  subclass: GGN, empirical Fisher, Hutchinson, exact diagonal) is summed with no code;
* :class:`Welford` (OBD-SD): Chan et al.'s parallel formula over ``k`` ranks,
  ``mean = sum n_r m_r / n``, ``M2 = sum_r [M2_r + n_r (m_r - mean)^2]`` (for two ranks
  exactly the pairwise ``M2_a + M2_b + delta^2 n_a n_b / n``);
* :class:`LayerInputStats`: ``sum X^T X`` and the row count;
* :class:`WoodburyInverse` (WoodFisher blocks): the Gram blocks ``G^T G`` add; kept vectors
  (the Woodbury strategy) are concatenated in rank order, i.e. in sample order.

A new accumulator type registers its own with :func:`register_reducer`, or follows the
convention and gets it for free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from . import group

Reducer = Callable[[Any, int | None], None]
REDUCERS: dict[type, Reducer] = {}


def register_reducer(cls: type) -> Callable[[Reducer], Reducer]:
    """Decorator: ``fn(acc, dst)`` merges ``acc`` in place (``dst``: only that rank needs it)."""

    def deco(fn: Reducer) -> Reducer:
        REDUCERS[cls] = fn
        return fn

    return deco


def reduce(acc: Any, dst: int | None = None) -> Any:
    """Merge ``acc``'s statistics over every rank in place and return it (no-op alone).

    Call once, after the last local ``update``. ``dst``: only rank ``dst`` gets the merged
    statistics (the others' are left partial; the layer-wise solvers reduce to the owner).
    """
    if not group.active():
        return acc
    _register_curvature()
    for cls in type(acc).__mro__:
        if cls in REDUCERS:
            REDUCERS[cls](acc, dst)
            return acc
    if not _conventional(acc):
        raise ConfigError(
            f"{type(acc).__name__} has no reducer: keep unnormalised sums in '*sums_' dicts "
            "with a 'count_', or register one with brainsurgeon.distributed.register_reducer"
        )
    reduce_sums(acc, dst)
    return acc


def _conventional(acc: Any) -> bool:
    return hasattr(acc, "count_") and any(k.endswith("sums_") for k in vars(acc))


def _like(acc: Any, name: str) -> Tensor | None:
    """A zero tensor shaped like target ``name`` (for a rank that saw no samples)."""
    targets = getattr(acc, "targets", {})
    if name not in targets:
        return None
    module, tensor = targets[name]
    w = getattr(module, tensor).detach()
    return torch.zeros_like(w, dtype=torch.float64 if w.is_floating_point() else w.dtype)


def _sum_scalar(value: float | int, what: str, dst: int | None) -> float | int:
    if isinstance(value, int):
        return int(group.sum_(torch.tensor(value, dtype=torch.long), what, dst))
    return float(group.sum_(torch.tensor(value, dtype=torch.float64), what, dst))


def _sum_dict(acc: Any, sums: dict[str, Any], what: str, dst: int | None) -> dict[str, Any]:
    names = list(getattr(acc, "targets", {})) or sorted(sums)
    group.check_same(what, *names)
    out = {}
    for name in names:
        value = sums.get(name)
        if not isinstance(value, Tensor):  # absent, or a 0 start value never updated
            value = _like(acc, name)
            if value is None:
                raise ConfigError(f"{what}: no statistics and no target shape for {name!r}")
        out[name] = group.sum_(value, f"{what}[{name}]", dst)
    return out


def reduce_sums(acc: Any, dst: int | None = None) -> None:
    """The convention: every ``*sums_`` dict, ``*_sum_`` scalar and ``count_`` is summed."""
    kind = type(acc).__name__
    for key in sorted(vars(acc)):
        value = getattr(acc, key)
        if key.endswith("sums_") and isinstance(value, dict):
            setattr(acc, key, _sum_dict(acc, value, f"{kind}.{key}", dst))
        elif key.endswith("sum_") or key == "count_":
            setattr(acc, key, _sum_scalar(value, f"{kind}.{key}", dst))


def merge_welford(w: Any, like: Tensor, what: str, dst: int | None = None) -> None:
    """Chan's parallel merge of a :class:`Welford` over the ranks, in place.

    ``like``: a tensor of the statistic's shape (a rank that saw nothing has no mean yet).
    """
    zero = torch.zeros(like.shape, dtype=torch.float64, device=like.device)
    mean = zero if w.mean is None else w.mean
    m2 = zero if w.m2 is None else w.m2
    n = _sum_scalar(int(w.count), f"{what}.count", None)
    if n == 0:
        return
    total = group.sum_(mean * w.count, f"{what}.mean", None) / n
    m2 = group.sum_(m2 + (mean - total).pow(2) * w.count, f"{what}.m2", dst)
    w.count, w.mean, w.m2 = n, total, m2


_REGISTERED: list[bool] = []


def _register_curvature() -> None:
    """The reducers of the curvature accumulators (registered on first use: no import cycle)."""
    if _REGISTERED:
        return
    _REGISTERED.append(True)
    from ..curvature.inverse import InverseFisher, WoodburyInverse
    from ..curvature.layer_inputs import LayerInputStats, weight_matrix
    from ..curvature.per_sample import DamageStats, Welford

    @register_reducer(DamageStats)
    def _damage(acc: DamageStats, dst: int | None) -> None:
        group.check_same("DamageStats targets", *acc.targets)
        for name in acc.targets:
            like = _like(acc, name)
            merge_welford(acc.stats_[name], like, f"DamageStats[{name}]", dst)
        acc.loss_sum_ = _sum_scalar(float(acc.loss_sum_), "DamageStats.loss_sum_", dst)
        acc.count_ = _sum_scalar(int(acc.count_), "DamageStats.count_", dst)

    @register_reducer(Welford)
    def _welford(w: Welford, dst: int | None) -> None:
        shape = [] if w.mean is None else list(w.mean.shape)
        widths = group.gather_varlen(torch.tensor(shape, dtype=torch.long), what="shape")
        known = next((s for s in widths if s.numel()), None)
        merge_welford(w, torch.zeros(known.tolist() if known is not None else []), "Welford", dst)

    @register_reducer(LayerInputStats)
    def _layer(acc: LayerInputStats, dst: int | None) -> None:
        w = getattr(acc.module, acc.tensor).detach()
        cols = weight_matrix(acc.module, acc.tensor, w).shape[1]
        local = acc.sum_
        if local is None:
            dtype = acc.sum_dtype(cols * cols)
            local = torch.zeros(cols, cols, dtype=dtype, device=w.device)
        what = f"layer inputs of {acc.name}"
        count = _sum_scalar(int(acc.count_), f"{what} (count)", dst)
        acc.sum_, acc.count_ = group.sum_(local, what, dst), count

    @register_reducer(InverseFisher)
    def _inverse_fisher(acc: InverseFisher, dst: int | None) -> None:
        reduce(acc.inverse, dst)

    @register_reducer(WoodburyInverse)
    def _woodbury(inv: WoodburyInverse, dst: int | None) -> None:
        from .woodfisher import reduce_woodbury

        reduce_woodbury(inv, dst)
