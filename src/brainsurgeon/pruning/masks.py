"""Pruning masks as parametrizations: ``W_eff = W * M``.

The forward pass only ever sees the masked tensor, so pruned entries are exactly zero after
any optimizer step (momentum, weight decay, Adam): their gradient through the mask is zero
and whatever the optimizer does to the hidden original is never seen. The mask is a bool
buffer, so it travels in ``state_dict``, survives ``deepcopy`` and is restored by
``brainsurgeon.load``. ``make_permanent`` bakes the zeros in.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..state import StatefulParametrization, original, parametrizations_of, register_parametrization


@register_parametrization("mask", "pruning mask: W * M with a boolean keep-mask buffer")
class Mask(StatefulParametrization):
    """Keep-mask ``M`` (bool, shape of W); ``forward(W) = W * M``."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        """``module.weight = V`` (and ``torch.func.functional_call``) stores ``V``; the mask
        still applies on the way out."""
        return value

    @classmethod
    def from_config(cls, config: dict[str, Any], original: torch.Tensor) -> Mask:
        return cls(torch.ones_like(original, dtype=torch.bool))

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return (
            f"kept={kept}/{self.mask.numel()} ({1 - kept / max(self.mask.numel(), 1):.1%} pruned)"
        )


def find_mask(module: nn.Module, tensor_name: str = "weight") -> Mask | None:
    for p in parametrizations_of(module, tensor_name):
        if isinstance(p, Mask):
            return p
    return None


def set_mask(module: nn.Module, tensor_name: str, keep: torch.Tensor) -> Mask:
    """Install or update the keep-mask of ``module.tensor_name`` (masks only ever shrink).

    The new mask is ``old & keep``: a weight pruned once stays pruned. The hidden original
    is zeroed at pruned positions too, so removing the parametrization loses nothing.
    """
    target = getattr(module, tensor_name)
    if keep.shape != target.shape:
        raise ConfigError(
            f"mask shape {tuple(keep.shape)} does not match "
            f"{tensor_name} shape {tuple(target.shape)}"
        )
    keep = keep.to(device=target.device, dtype=torch.bool)
    mask = find_mask(module, tensor_name)
    if mask is None:
        mask = Mask(keep)
        parametrize.register_parametrization(module, tensor_name, mask)
    else:
        mask.mask.logical_and_(keep)
    with torch.no_grad():
        original(module, tensor_name).mul_(mask.mask.to(target.dtype))
    return mask


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"fc1.weight": keep_mask}`` for every masked tensor of ``model``."""
    out = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in module.parametrizations:
            mask = find_mask(module, tensor_name)
            if mask is not None:
                key = f"{module_name}.{tensor_name}" if module_name else tensor_name
                out[key] = mask.mask
    return out
