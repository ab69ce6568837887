"""Choosing units from their scores, and a stand-in group builder for plain MLPs.

:func:`select_units` is the selector of "a criterion scores, a selector chooses, a mask
applies": it turns ``{group: importance (units,)}`` into ``{group: keep (units,) bool}``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .groups import Group, Slice

SCHEMES = ("per-layer", "global")
NORMALIZE = ("none", "l2", "max", "sum")


def _normalized(s: Tensor, how: str) -> Tensor:
    """``s / ||s||_2`` (Molchanov et al. 2017's layer-wise rescaling), ``s / max|s|`` or
    ``s / sum|s|``; unchanged where the norm is 0."""
    if how == "none":
        return s
    norm = {"l2": s.norm(), "max": s.abs().max(), "sum": s.abs().sum()}[how]
    return s / norm if float(norm) > 0 else s


def _check(scores: dict[str, Tensor], amount: float, scheme: str, normalize: str) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize must be one of {list(NORMALIZE)}, got {normalize!r}")
    if isinstance(amount, bool) or not 0.0 <= float(amount) <= 1.0:
        raise ConfigError(
            f"amount is the fraction of units to remove, in [0, 1]; got {amount!r} (e.g. 0.5)"
        )
    if not scores:
        raise ConfigError("no groups to select from; pass {group name: scores (units,)}")
    for name, s in scores.items():
        if s.dim() != 1 or s.numel() == 0:
            raise ConfigError(f"scores of {name} must be a non-empty 1-D tensor, got {s.shape}")
        if not bool(torch.isfinite(s).all()):
            raise ConfigError(f"scores of {name} contain NaN or infinite values")


def select_units(
    scores: dict[str, Tensor],
    amount: float,
    *,
    scheme: str = "per-layer",
    min_keep: int = 1,
    normalize: str = "none",
) -> dict[str, Tensor]:
    """Keep-masks removing the fraction ``amount`` of units with the lowest importance.

    * ``per-layer``: ``round(amount * units)`` removed in every group;
    * ``global``: ``round(amount * all units)`` removed by one ranking across groups. Raw
      scores are compared as they are (right for loss-scale criteria: ``obd`` mean,
      ``true-damage``, ``group-obs``); norms and activations differ in scale between layers,
      so pass ``normalize="l2"`` (``s / ||s||``, Molchanov et al. 2017), ``"max"`` or ``"sum"``.

    A selection leaving a group with fewer than ``min_keep`` units is refused (a
    :class:`ConfigError` naming the group): removing every unit of a layer disconnects the
    model. Ties are broken by unit index (lower index removed first).
    """
    _check(scores, amount, scheme, normalize)
    keep = {n: torch.ones(s.numel(), dtype=torch.bool) for n, s in scores.items()}
    if scheme == "per-layer":
        for name, s in scores.items():
            k = int(round(float(amount) * s.numel()))
            keep[name][_lowest(s, k)] = False
    else:
        names = list(scores)
        flat = torch.cat([_normalized(scores[n].double().cpu(), normalize) for n in names])
        owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
        local = torch.cat([torch.arange(scores[n].numel()) for n in names])
        for j in _lowest(flat, int(round(float(amount) * flat.numel()))).tolist():
            keep[names[int(owner[j])]][local[j]] = False
    for name, k in keep.items():
        left = int(k.sum())
        if left < min_keep:
            n = k.numel()
            what = f"all {n} units" if left == 0 else f"{n - left} of {n} units"
            hint = (
                "lower amount"
                if scheme == "per-layer"
                else "lower amount, normalize the scores or use scheme='per-layer'"
            )
            raise ConfigError(
                f"{scheme} selection of amount={amount} would remove {what} of {name}; "
                f"keep at least {'one' if min_keep == 1 else min_keep} ({hint})"
            )
    return keep


def _lowest(s: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` lowest scores (stable: ties go to the lower index)."""
    order = torch.sort(s.double().cpu(), stable=True).indices
    return order[:k]


def mlp_groups(model: nn.Module) -> list[Group]:
    """STAND-IN until :func:`brainsurgeon.structured.graph.find_groups` lands: the neuron
    groups of a plain chain of ``nn.Linear`` layers (in registration order; every Linear but
    the last feeds the next one, with only elementwise layers in between, which this does not
    check). Group of ``a`` -> ``b``: producers ``a.weight`` rows and ``a.bias``, consumer
    ``b.weight`` columns."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    groups = []
    for (a_name, a), (b_name, b) in zip(linears, linears[1:], strict=False):
        if a.out_features != b.in_features:
            raise ConfigError(
                f"{a_name} has {a.out_features} outputs but {b_name} reads {b.in_features}: "
                "not a Linear chain; use find_groups"
            )
        producers = (Slice(a_name, "weight", 0),)
        if a.bias is not None:
            producers += (Slice(a_name, "bias", 0),)
        groups.append(
            Group(
                name=a_name,
                kind="neuron",
                units=a.out_features,
                producers=producers,
                consumers=(Slice(b_name, "weight", 1),),
            )
        )
    return groups
