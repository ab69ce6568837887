"""Physical removal of units: every tensor of a group loses the removed indices.

``shrink`` cuts weights, biases, norm affines and running statistics with ``index_select``,
updates the size attributes (``in_features``, ``out_channels``, ``num_features``,
``normalized_shape``, ``num_heads``) and replaces an ``nn.MultiheadAttention`` that loses
heads by a :class:`.attention.SlimMultiheadAttention`. Masks (``Mask`` parametrizations) are
cut with their tensors, so a masked model stays masked; any other parametrization
(quantizers) must be baked first with ``brainsurgeon.state.make_permanent``. Optimizer state
refers to the old tensors: build a new optimizer after shrinking.

The surgery is recorded on the model as ``{"kind": "shrink", "attention": [...], "tensors":
[[module, tensor, shape], ...]}``; ``brainsurgeon.load`` replays it on a freshly built model
(placeholder weights of the new shapes) before loading the saved tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, RunDirError, UnsupportedLayerError
from ..factorization.layers import set_submodule
from ..pruning.masks import Mask, set_mask
from ..state import original, parametrizations_of, record_edit, register_edit
from .attention import SlimMultiheadAttention
from .groups import Group
from .masks import check_keep

Cuts = dict[tuple[str, str], dict[int, set[int]]]


def shrink(
    model: nn.Module, groups_and_keeps: Mapping[Group, torch.Tensor] | Iterable[tuple]
) -> nn.Module:
    """Remove the units whose ``keep`` (bool, (units,)) is False from each group, in place.

    The groups must come from :func:`.graph.find_groups` on this model as it is now (recompute
    them after each shrink). Returns ``model``.
    """
    pairs = groups_and_keeps.items() if isinstance(groups_and_keeps, Mapping) else groups_and_keeps
    cuts: Cuts = {}
    for group, keep in pairs:
        removed = (~check_keep(group, keep)).nonzero().flatten()
        for s in group.slices():
            axes = cuts.setdefault((s.module, s.tensor), {})
            axes.setdefault(s.axis, set()).update(s.indices(removed).tolist())
    attention = sorted({m for m, t in cuts if t.startswith("in_proj")})
    attention = [m for m in attention if _to_slim(model, m)]
    for (name, tensor), axes in cuts.items():
        _cut(model.get_submodule(name), name, tensor, axes)
    for name in dict.fromkeys(m for m, _ in cuts):
        sync_sizes(model.get_submodule(name))
    shapes = [[m, t, list(original(model.get_submodule(m), t).shape)] for m, t in cuts]
    record_edit(model, {"kind": "shrink", "attention": attention, "tensors": shapes})
    return model


def _cut(module: nn.Module, name: str, tensor: str, axes: dict[int, set[int]]) -> None:
    """Drop the indices ``axes[axis]`` of ``module.tensor`` (its masks too)."""
    old = original(module, tensor)
    index = {}
    for axis, removed in axes.items():
        size = old.shape[axis]
        if removed and max(removed) >= size:
            raise ConfigError(
                f"{name}.{tensor} has {size} entries along axis {axis}, a group needs index "
                f"{max(removed)}; recompute the groups with find_groups after each shrink"
            )
        index[axis] = torch.tensor(sorted(set(range(size)) - removed), device=old.device)

    def select(t: torch.Tensor) -> torch.Tensor:
        for axis, idx in index.items():
            t = t.index_select(axis, idx)
        return t.detach().clone()

    if parametrize.is_parametrized(module, tensor):
        chain = module.parametrizations[tensor]
        for p in chain:
            if not isinstance(p, Mask):
                raise UnsupportedLayerError(
                    f"{name}.{tensor} carries a {type(p).__name__} parametrization that "
                    "shrink cannot cut; bake it first with brainsurgeon.state.make_permanent"
                )
            p.mask = select(p.mask)
        chain.original = nn.Parameter(select(old), requires_grad=old.requires_grad)
    elif isinstance(old, nn.Parameter):
        setattr(module, tensor, nn.Parameter(select(old), requires_grad=old.requires_grad))
    else:
        setattr(module, tensor, select(old))


@torch.no_grad()
def _to_slim(model: nn.Module, name: str) -> bool:
    """Swap ``nn.MultiheadAttention`` ``name`` for an equal SlimMultiheadAttention."""
    mha = model.get_submodule(name)
    if not isinstance(mha, nn.MultiheadAttention):
        return False
    slim = SlimMultiheadAttention.like(mha).to(original(mha, "in_proj_weight"))
    for t in ("in_proj_weight", "in_proj_bias"):
        if getattr(mha, t) is None:
            continue
        getattr(slim, t).copy_(original(mha, t))
        masks = [p for p in parametrizations_of(mha, t) if isinstance(p, Mask)]
        for p in masks:
            set_mask(slim, t, p.mask)
    slim.out_proj = mha.out_proj
    set_submodule(model, name, slim.train(mha.training))
    return True


def _linear(m: nn.Module) -> None:
    m.out_features, m.in_features = original(m, "weight").shape[:2]


def _conv(m: nn.Module) -> None:
    w = original(m, "weight")
    m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups


def _norm(m: nn.Module) -> None:
    m.num_features = (original(m, "weight") if m.weight is not None else m.running_mean).shape[0]


def _layer_norm(m: nn.Module) -> None:
    m.normalized_shape = (original(m, "weight").shape[0],)


def _attention(m: nn.Module) -> None:
    m.num_heads = original(m, "in_proj_weight").shape[0] // (3 * m.head_dim)


# Size attributes to update from the (cut) tensors, by layer type (matched along the MRO).
SIZE_RULES: dict[type[nn.Module], Callable[[nn.Module], None]] = {
    nn.Linear: _linear,
    nn.modules.conv._ConvNd: _conv,
    nn.modules.batchnorm._NormBase: _norm,
    nn.LayerNorm: _layer_norm,
    SlimMultiheadAttention: _attention,
}


def sync_sizes(module: nn.Module) -> None:
    for cls in type(module).__mro__:
        if cls in SIZE_RULES:
            SIZE_RULES[cls](module)
            return


@register_edit("shrink", "structured surgery: units removed from coupled tensors")
def apply_shrink(model: nn.Module, record: dict[str, Any]) -> None:
    """Rebuild the shrunk structure of ``record`` with placeholder (zero) weights."""
    try:
        for name in record.get("attention", []):
            _to_slim(model, name)
        for name, tensor, shape in record["tensors"]:
            module = model.get_submodule(name)
            old = getattr(module, tensor)
            new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            setattr(module, tensor, new)
    except AttributeError as err:
        raise RunDirError(
            f"shrink edit does not fit the model ({err}); the run config does not match its model"
        ) from None
    for name in dict.fromkeys(n for n, _, _ in record["tensors"]):
        sync_sizes(model.get_submodule(name))


@torch.no_grad()
def find_dead_units(
    model: nn.Module, groups: Iterable[Group], tol: float = 0.0
) -> dict[str, torch.Tensor]:
    """``{group name: dead (units,) bool}``: units whose producer parameters (weight rows,
    biases, norm affines; not running statistics) all have ``|w| <= tol``, e.g. after group
    lasso. Pass ``~dead`` as the keep of :func:`shrink`."""
    out = {}
    for g in groups:
        dead = torch.ones(g.units, dtype=torch.bool)
        for s in g.producers:
            module = model.get_submodule(s.module)
            if s.tensor in dict(module.named_buffers(recurse=False)):
                continue
            t = getattr(module, s.tensor).detach().movedim(s.axis, 0)
            t = t[s.offset : s.offset + g.units * s.unit_size].reshape(g.units, -1)
            dead &= (t.abs().amax(dim=1) <= tol).cpu()
        out[g.name] = dead
    return out
