"""Low-rank replacements for Linear and Conv2d, and the ``factorize`` architecture edit.

``Linear(n -> m)`` becomes ``LowRankLinear``: ``down = Linear(n -> k, no bias)`` then
``up = Linear(k -> m)``. ``Conv2d(in -> out, kh x kw)`` becomes ``LowRankConv2d``: a k-channel
conv with the original kernel, stride and padding, then a 1x1 conv to ``out`` channels. Both
children are ordinary ``nn.Linear`` / ``nn.Conv2d`` modules, so pruning masks and quantizers
attach to ``fc1.down.weight`` / ``fc1.up.weight`` like to any other layer.

Each replacement is recorded on the model as ``{"kind": "factorize", "module", "layer",
"shape", "rank"}``; ``brainsurgeon.load`` replays it (placeholder weights) before loading the
tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import RunDirError, UnsupportedLayerError
from ..state import record_edit, register_edit
from .svd import SVD


class LowRankLinear(nn.Module):
    """``x -> up(down(x))`` with down (k, n) and up (m, k): ``W ~ up.weight @ down.weight``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @staticmethod
    def matrix(layer: nn.Linear) -> torch.Tensor:
        return layer.weight

    @classmethod
    def placeholder(cls, layer: nn.Linear, rank: int) -> LowRankLinear:
        return cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)

    def load_factors(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """``left`` (m, k) and ``right`` (k, n) from :meth:`SVD.factors`."""
        self.up.weight.copy_(left)
        self.down.weight.copy_(right)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class LowRankConv2d(nn.Module):
    """A k-channel ``kh x kw`` conv (down) then a 1x1 conv to ``out`` channels (up).

    Shapes: down.weight (k, in, kh, kw), up.weight (out, k, 1, 1); the product of the two
    reshaped matrices approximates the (out, in*kh*kw) weight matrix.
    """

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.rank = conv.in_channels, conv.out_channels, rank
        self.down = nn.Conv2d(
            conv.in_channels,
            rank,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=False,
            padding_mode=conv.padding_mode,
        )
        self.up = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)

    @staticmethod
    def matrix(layer: nn.Conv2d) -> torch.Tensor:
        if layer.groups != 1:
            raise UnsupportedLayerError(
                f"cannot factorize a grouped conv (groups={layer.groups}); only groups=1 Conv2d "
                "layers are supported, leave it out with --layers"
            )
        return layer.weight.reshape(layer.out_channels, -1)

    @classmethod
    def placeholder(cls, layer: nn.Conv2d, rank: int) -> LowRankConv2d:
        return cls(layer, rank)

    def load_factors(self, left: torch.Tensor, right: torch.Tensor) -> None:
        self.up.weight.copy_(left.reshape(self.up.weight.shape))
        self.down.weight.copy_(right.reshape(self.down.weight.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


# Dispatch on layer type (parametrized subclasses resolve through the MRO).
FACTORED: dict[type[nn.Module], type[LowRankLinear] | type[LowRankConv2d]] = {
    nn.Linear: LowRankLinear,
    nn.Conv2d: LowRankConv2d,
}


# Parents that read a child's weight directly instead of calling the child (so replacing the
# child by a factor pair breaks the parent): nn.MultiheadAttention passes out_proj.weight to
# F.multi_head_attention_forward; nn.TransformerEncoderLayer's fused inference path (eval,
# batch_first) passes linear1/linear2 weights to torch._transformer_encoder_layer_fwd.
FUNCTIONAL_CHILDREN: dict[type[nn.Module], tuple[str, ...]] = {
    nn.MultiheadAttention: ("out_proj",),
    nn.TransformerEncoderLayer: ("linear1", "linear2"),
}


def functional_children(model: nn.Module) -> dict[str, str]:
    """``{layer name: why it cannot be replaced}`` for children whose parent uses their weight
    functionally (e.g. ``"encoder.layers.0.self_attn.out_proj"``)."""
    out = {}
    for name, module in model.named_modules():
        for cls in type(module).__mro__:
            for child in FUNCTIONAL_CHILDREN.get(cls, ()):
                full = f"{name}.{child}" if name else child
                out[full] = (
                    f"its parent {cls.__name__} reads {child}.weight directly instead of "
                    "calling the layer, so a factor pair cannot stand in for it"
                )
    return out


def handler(layer: nn.Module) -> type[LowRankLinear] | type[LowRankConv2d] | None:
    """The low-rank class for ``layer``'s type, or None if it has none."""
    for cls in type(layer).__mro__:
        if cls in FACTORED:
            return FACTORED[cls]
    return None


def require_handler(name: str, layer: nn.Module) -> type[LowRankLinear] | type[LowRankConv2d]:
    found = handler(layer)
    if found is None:
        raise UnsupportedLayerError(
            f"{name} is a {type(layer).__name__}; factorization supports "
            f"{', '.join(c.__name__ for c in FACTORED)} layers only"
        )
    return found


def layer_matrix(name: str, layer: nn.Module) -> torch.Tensor:
    """The (m, n) matrix to factor: the effective weight (masks/quantizers applied)."""
    return require_handler(name, layer).matrix(layer)


@torch.no_grad()
def factored_layer(name: str, layer: nn.Module, svd: SVD, rank: int) -> nn.Module:
    """A low-rank module equal to ``layer`` with its weight replaced by ``U_k S_k V_k^T``."""
    cls = require_handler(name, layer)
    weight = layer.weight
    new = cls.placeholder(layer, rank).to(device=weight.device, dtype=weight.dtype)
    left, right = svd.factors(rank)
    new.load_factors(left.to(weight.dtype), right.to(weight.dtype))
    if layer.bias is not None:
        new.up.bias.copy_(layer.bias)
    return new


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def edit_record(name: str, layer: nn.Module, rank: int) -> dict[str, Any]:
    return {
        "kind": "factorize",
        "module": name,
        "layer": type(layer).__name__.removeprefix("Parametrized"),
        "shape": list(layer.weight.shape),
        "rank": int(rank),
    }


def replace_layer(model: nn.Module, name: str, svd: SVD, rank: int) -> dict[str, Any]:
    """Swap ``model.name`` for its rank-``rank`` factorization and record the edit."""
    layer = model.get_submodule(name)
    record = edit_record(name, layer, rank)
    set_submodule(model, name, factored_layer(name, layer, svd, rank))
    record_edit(model, record)
    return record


@register_edit("factorize", "low-rank SVD factorization: one layer replaced by two (rank k)")
def apply_factorize(model: nn.Module, record: dict[str, Any]) -> None:
    """Rebuild the factored structure of ``record`` with placeholder weights."""
    name = record["module"]
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise RunDirError(
            f"factorize edit names layer {name!r}, which the model lacks; the run "
            "config does not match its model"
        ) from None
    if list(layer.weight.shape) != list(record["shape"]):
        raise RunDirError(
            f"factorize edit expects {name} with weight shape {record['shape']}, "
            f"found {list(layer.weight.shape)}; the run config is inconsistent"
        )
    cls = require_handler(name, layer)
    new = cls.placeholder(layer, int(record["rank"]))
    set_submodule(model, name, new.to(device=layer.weight.device, dtype=layer.weight.dtype))
