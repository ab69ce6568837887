"""Example inputs for measurements (FLOPs, energy, latency) from what the caller has.

An *example* is one sample with a batch axis of 1, in the form the model takes:

* a float tensor (images, features), integer token ids (N, T) for an ``nn.Embedding`` model,
  or a dict of tensors (called as ``model(**example)``), of which the first sample is used;
* a ``Dataset`` / ``DataBundle`` / ``(x, y)`` tuple: the first training input;
* a shape tuple such as ``(1, 28, 28)``: zeros of that shape, integer (token 0) when the
  model's first compressible layer is an embedding, float otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..data.core import DataBundle, Dataset, as_dataset
from ..errors import ConfigError, UnsupportedLayerError
from ..models.adapters import compressible_layers

Example = Tensor | dict[str, Tensor]
ExampleLike = Example | tuple[int, ...] | list[int] | Dataset | DataBundle | tuple


def is_shape(value: Any) -> bool:
    return isinstance(value, tuple | list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def takes_tokens(model: nn.Module) -> bool:
    """Whether the first compressible layer of ``model`` is an embedding (integer inputs)."""
    try:
        layers = compressible_layers(model)
    except UnsupportedLayerError:
        return False
    return bool(layers) and isinstance(layers[0][1], nn.Embedding | nn.EmbeddingBag)


def example_input(
    source: ExampleLike, model: nn.Module | None = None, device: torch.device | None = None
) -> Example:
    """One sample (batch axis of 1) from ``source``, on ``device``; see the module doc."""
    if is_shape(source) and hasattr(model, "example_input"):
        x = model.example_input(tuple(source))  # a model that knows its input (tokens + mask)
    elif is_shape(source):
        tokens = model is not None and takes_tokens(model)
        x: Example = torch.zeros(1, *source, dtype=torch.long if tokens else torch.float32)
    elif isinstance(source, Tensor):
        x = source[:1] if source.dim() else source
    elif isinstance(source, dict):
        x = {k: v[:1] if isinstance(v, Tensor) and v.dim() else v for k, v in source.items()}
    elif isinstance(source, Dataset | DataBundle | tuple | list):
        x = as_dataset(source, "train").x[:1]
    else:
        raise ConfigError(
            f"cannot build an example input from {type(source).__name__}; pass a tensor "
            "(one batch), a dict of tensors, a Dataset / DataBundle or an input shape tuple"
        )
    return x if device is None else to_device(x, device)


def to_device(example: Example, device: torch.device | str) -> Example:
    if isinstance(example, dict):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in example.items()}
    return example.to(device)


def repeat(example: Example, batch: int) -> Example:
    """The example repeated to a batch of ``batch`` samples (for latency)."""

    def rep(t: Tensor) -> Tensor:
        return t.expand(batch, *t.shape[1:]).contiguous() if t.dim() else t

    if isinstance(example, dict):
        return {k: rep(v) if isinstance(v, Tensor) else v for k, v in example.items()}
    return rep(example)


def call(model: nn.Module, example: Example) -> Any:
    """``model(**example)`` for a dict, else ``model(example)``."""
    return model(**example) if isinstance(example, dict) else model(example)
