"""Structured masks: a removed unit is zeroed in every tensor of its group.

The masked model computes exactly what the shrunk model (:func:`.surgery.shrink`) computes:
every consumer (the next layer's columns, ``out_proj``'s head columns) sees 0 for a removed
unit, whatever the elementwise ops between produce for it. Parameters get brainsurgeon's
:class:`~brainsurgeon.pruning.masks.Mask` parametrization (so ``state_dict``, ``deepcopy`` and
save/load keep working, and masks only ever shrink); buffers (BatchNorm running statistics)
are left as they are: a removed channel's BatchNorm affine is zero and its consumers ignore it.
A LayerNorm over the units is refused: its mean and variance would still count the zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedLayerError
from ..pruning.masks import set_mask
from .groups import Group, Slice

# Norms whose statistics mix the units they normalize: a zeroed unit still counts.
MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)


def check_keep(group: Group, keep: torch.Tensor) -> torch.Tensor:
    """``keep`` as a bool tensor of shape ``(group.units,)`` with at least one True."""
    keep = torch.as_tensor(keep)
    if keep.dtype != torch.bool or tuple(keep.shape) != (group.units,):
        raise ConfigError(
            f"keep for {group.name} must be a bool tensor of shape ({group.units},), got "
            f"{keep.dtype} of shape {tuple(keep.shape)}"
        )
    if not bool(keep.any()):
        raise ConfigError(
            f"would remove all {group.units} units of {group.name}; keep at least one"
        )
    return keep.cpu()


def unit_mask(tensor: torch.Tensor, s: Slice, removed: torch.Tensor) -> torch.Tensor:
    """Bool keep-mask of ``tensor``'s shape, False on the indices ``s`` gives ``removed``."""
    keep = torch.ones_like(tensor, dtype=torch.bool)
    idx = s.indices(removed.to(tensor.device))
    if idx.numel() and int(idx.max()) >= tensor.shape[s.axis]:
        raise ConfigError(
            f"{s.module}.{s.tensor} has {tensor.shape[s.axis]} entries along axis {s.axis}, "
            f"the group needs index {int(idx.max())}; recompute the groups with find_groups"
        )
    return keep.index_fill_(s.axis, idx, False)


def apply_unit_mask(model: nn.Module, group: Group, keep: torch.Tensor) -> nn.Module:
    """Zero every slice of the units of ``group`` where ``keep`` (units,) is False."""
    keep = check_keep(group, keep)
    for s in group.slices():
        module = model.get_submodule(s.module)
        if isinstance(module, MIXING_NORMS):
            raise UnsupportedLayerError(
                f"the units of {group.name} are normalized by {type(module).__name__} "
                f"{s.module}: zeroed units still count in its mean and variance, so a mask "
                "cannot compute what the shrunk model does; remove them with "
                "brainsurgeon.structured.shrink instead"
            )
    removed = (~keep).nonzero().flatten()
    for s in group.slices():
        module = model.get_submodule(s.module)
        if s.tensor in dict(module.named_buffers(recurse=False)):
            continue  # running statistics: the zero affine and consumers make them moot
        set_mask(module, s.tensor, unit_mask(getattr(module, s.tensor), s, removed))
    return model
