"""What the vector quantizers (product, residual) share: their state and their input checks."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .base import FLOAT_BITS, QuantParametrization
from .registry import LayerPlan


class CodebookQuant(QuantParametrization):
    """State of a vector quantizer: trainable ``codebooks`` ``(c, k, d)``, int16 ``indices``,
    and an optional ``keep`` mask holding weights pruned before quantizing at exactly 0.

    Subclasses implement ``decode() -> (..., d)`` vectors and ``coded_weights()``.
    """

    def __init__(
        self,
        codebooks: torch.Tensor,
        indices: torch.Tensor,
        bits: int,
        keep: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.bits = int(bits)
        self.codebooks = nn.Parameter(codebooks.detach().float().clone())
        self.register_buffer("indices", indices.detach().to(torch.int16).clone())
        self.register_buffer("keep", None if keep is None else keep.detach().bool().clone())
        self.coded = self.coded_weights()

    def decode(self) -> torch.Tensor:
        raise NotImplementedError

    def coded_weights(self) -> int:
        raise NotImplementedError

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = self.decode().reshape(weight.shape).to(weight.dtype)
        return out if self.keep is None else out * self.keep

    def index_bits(self) -> int:
        return self.indices.numel() * self.bits

    def codebook_bits(self) -> int:
        return self.codebooks.numel() * FLOAT_BITS


def check_block_width(layer: LayerPlan, width: int, method: str) -> int:
    """Number of column blocks ``s = fan_in / d``; a clear error if ``d`` does not divide it."""
    fan_in = layer.weight[0].numel()
    if fan_in % width:
        divisors = [d for d in range(1, min(fan_in, 64) + 1) if fan_in % d == 0]
        raise ConfigError(
            f"{method} block width {width} does not divide the {fan_in} input columns of "
            f"{layer.name}; choose a divisor, e.g. --block-width "
            f"{', '.join(map(str, divisors[:8]))} (or exclude the tensor)"
        )
    return fan_in // width


def check_codebook_size(layer: LayerPlan, vectors: int, method: str) -> None:
    """``k = 2^bits`` must not exceed the number of vectors clustered together."""
    k = 2**layer.bits
    if k > vectors:
        most = max(vectors.bit_length() - 1, 0)
        raise ConfigError(
            f"{method} with {layer.bits} bits needs k={k} centroids but {layer.name} has only "
            f"{vectors} vectors per codebook; use at most {most} bits there "
            f"(e.g. --per-layer-bits {layer.name}={most}) or exclude it"
        )
