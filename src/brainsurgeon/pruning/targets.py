"""Which tensors a pruning step may touch: the adapter's table of compressible tensors.

By default the weights of every layer type the adapter knows (Linear, Conv, LSTM/GRU,
MultiheadAttention, Embedding; :mod:`brainsurgeon.models.adapters`); biases, the first and
the last layer (in module order) are configurable, and ``layers`` / ``exclude`` are glob
patterns. Names are ``state_dict`` names without parametrization plumbing: ``"fc1.weight"``.
"""

from __future__ import annotations

from torch import nn

from ..models.adapters import LAYOUTS, compressible, compressible_layers

#: the module classes with a layout rule (registering a layout extends what is pruned)
PRUNABLE = tuple(LAYOUTS)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every compressible layer, in module order."""
    return compressible_layers(model)


#: ``{"fc1.weight": (module, "weight"), ...}`` of the tensors a pruning step may touch: the
#: adapter's :func:`~brainsurgeon.models.adapters.compressible` under its pruning name.
eligible_targets = compressible
