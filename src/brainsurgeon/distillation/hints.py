"""FitNets plumbing: read a named layer's output with a forward hook; build the regressor.

The regressor maps the student's guided-layer output to the shape of the teacher's hint-layer
output: a Linear for (N, d) features, a 1x1 conv for (N, C, H, W) maps of equal size, else a
Linear on the flattened features (Romero et al. 2015).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import ConfigError


def layer_names(model: nn.Module) -> list[str]:
    """Names a hint or guided layer may take (every named submodule)."""
    return [n for n, _ in model.named_modules() if n and ".parametrizations" not in f".{n}"]


def check_layer(model: nn.Module, name: str | None, *, role: str, option: str) -> str:
    """``name`` if ``model`` has such a submodule, else a :class:`ConfigError` listing them."""
    valid = layer_names(model)
    if name is None:
        raise ConfigError(
            f"the hint loss needs the {role} layer; pass {option} NAME, one of: {', '.join(valid)}"
        )
    if name not in valid:
        raise ConfigError(
            f"the {role} has no layer named {name!r}; valid {option} names: {', '.join(valid)}"
        )
    return name


@contextlib.contextmanager
def tap(model: nn.Module, name: str) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, ``box["out"]`` holds the latest output of ``model.name``."""
    box: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        box["out"] = output

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


class Flatten2(nn.Module):
    """Flatten to (N, -1) then a Linear, reshaped to the hint's shape."""

    def __init__(self, n_in: int, out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.linear = nn.Linear(n_in, math.prod(out_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).reshape(x.shape[0], *self.out_shape)


def make_regressor(guided: torch.Tensor, hint: torch.Tensor) -> nn.Module:
    """A trainable map from guided outputs (N, ...) to hint outputs (N, ...)."""
    if guided.dim() == 2 and hint.dim() == 2:
        return nn.Linear(guided.shape[1], hint.shape[1])
    if guided.dim() == 4 and hint.dim() == 4 and guided.shape[2:] == hint.shape[2:]:
        return nn.Conv2d(guided.shape[1], hint.shape[1], 1)
    return Flatten2(math.prod(guided.shape[1:]), tuple(hint.shape[1:]))
