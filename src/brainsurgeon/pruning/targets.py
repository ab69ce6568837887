"""Which tensors a pruning step may touch: the adapter's table of compressible tensors.

By default the weights of every layer type the adapter knows (Linear, Conv, LSTM/GRU,
MultiheadAttention, Embedding; :mod:`brainsurgeon.models.adapters`); biases, the first and
the last layer (in module order) are configurable, and ``layers`` / ``exclude`` are glob
patterns. Names are ``state_dict`` names without parametrization plumbing: ``"fc1.weight"``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..models.adapters import LAYOUTS, compressible, compressible_layers

#: the module classes with a layout rule (registering a layout extends what is pruned)
PRUNABLE = tuple(LAYOUTS)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every compressible layer, in module order."""
    return compressible_layers(model)


def eligible_targets(
    model: nn.Module,
    *,
    include_bias: bool = False,
    include_first: bool = True,
    include_last: bool = True,
    layers: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> dict[str, tuple[nn.Module, str]]:
    """``{"fc1.weight": (module, "weight"), ...}`` of the tensors a pruning step may touch
    (:func:`brainsurgeon.models.adapters.compressible`)."""
    return compressible(
        model,
        include_bias=include_bias,
        include_first=include_first,
        include_last=include_last,
        layers=layers,
        exclude=exclude,
    )
