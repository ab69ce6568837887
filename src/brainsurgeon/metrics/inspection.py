"""``inspect_model``: the per-layer table plus sparsity over every parameter and what is dense.

``parameters`` counts every parameter of the model (effective tensors: masks applied);
``compressible`` only the tensors the adapter lets a compression step touch
(:func:`brainsurgeon.models.adapters.compressible`), and ``left_dense`` names each other
parameter with the reason it is not compressed (a bias, a layer type with no layout rule).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedLayerError
from ..models.adapters import Targets, compressible, left_dense
from .counting import effective_tensors, layer_modules, summarize
from .inputs import ExampleLike


def _sparsity(tensors: list[torch.Tensor]) -> dict[str, Any]:
    with torch.no_grad():
        params = sum(t.numel() for t in tensors)
        nonzeros = sum(int(torch.count_nonzero(t)) for t in tensors)
    return {
        "tensors": len(tensors),
        "params": params,
        "nonzeros": nonzeros,
        "sparsity": 1.0 - nonzeros / params if params else 0.0,
    }


def effective_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter by qualified name (``"enc.layers.0.linear1.weight"``), as the forward
    pass sees it (a masked weight appears once, by its own name, with the mask applied)."""
    out = {}
    for name, module in layer_modules(model):
        for tensor, value in effective_tensors(module).items():
            out[f"{name}.{tensor}" if name else tensor] = value
    return out


def inspect_model(
    model: nn.Module, example: ExampleLike | None = None, *, targets: Targets | None = None
) -> dict[str, Any]:
    """:func:`summarize` (FLOPs when ``example`` is given) plus, over ``targets`` (default:
    the adapter's compressible tensors), ``compressible`` / ``parameters`` sparsity and
    ``left_dense``: ``[{"name", "params", "reason"}]`` for every other parameter.

    Works for any model the adapter knows (Linear, Conv, LSTM/GRU, attention, embeddings);
    ``example`` may be integer token ids or a dict of tensors.
    """
    payload = summarize(model, example)
    if targets is None:
        try:
            targets = compressible(model)
        except UnsupportedLayerError:
            targets = {}
    chosen = [getattr(module, tensor) for module, tensor in targets.values()]
    every = effective_parameters(model)
    payload["compressible"] = _sparsity(chosen)
    payload["parameters"] = _sparsity(list(every.values()))
    payload["left_dense"] = [
        {"name": name, "params": every[name].numel() if name in every else 0, "reason": reason}
        for name, reason in left_dense(model, targets).items()
    ]
    return payload
