"""Binary weights (XNOR-Net, Rastegari et al. 2016): ``W_hat = alpha * sign(W)``.

``alpha = mean|W|`` per output channel (or per tensor) minimises ``||W - alpha sign(W)||^2``.
One bit per weight plus one float per channel (about 32x smaller). Trained through a
straight-through estimator. A pruned weight (0) stays 0: ``sign(0) = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...state import register_parametrization
from ..base import (
    FLOAT_BITS,
    QuantParametrization,
    channel_view,
    masked_mean_abs,
    reduce_channels,
    ste,
)
from ..config import ScaleOptions
from ..registry import LayerPlan, Quantizer, register_quantizer


@dataclass(frozen=True)
class BinaryConfig(ScaleOptions):
    """Binary weights; one bit per weight (``bits`` may only be 1), ``granularity`` of alpha."""

    METHOD: ClassVar[str] = "binary"
    BITS: ClassVar[tuple[int, int]] = (1, 1)
    DEFAULT_BITS: ClassVar[int] = 1


@register_parametrization("binary", "binary weights: alpha * sign(W), alpha per channel or tensor")
class BinaryQuant(QuantParametrization):
    """``forward(W) = ste(W, alpha * sign(W))``; buffer ``alpha`` ``(C,)``."""

    def __init__(self, alpha: torch.Tensor, coded: int) -> None:
        super().__init__()
        self.bits, self.coded = 1, int(coded)
        self.register_buffer("alpha", alpha.detach().float().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        alpha = channel_view(self.alpha, weight).to(weight.dtype)
        return ste(weight, alpha * torch.sign(weight))

    def config(self) -> dict[str, Any]:
        return {"channels": self.alpha.numel(), "coded": self.coded}

    @classmethod
    def from_config(cls, config: dict[str, Any], original: torch.Tensor) -> BinaryQuant:
        return cls(torch.ones(config["channels"]), config["coded"])

    def index_bits(self) -> int:
        return self.coded

    def codebook_bits(self) -> int:
        return self.alpha.numel() * FLOAT_BITS


def binary_alpha(
    weight: torch.Tensor, keep: torch.Tensor | None, per_channel: bool
) -> torch.Tensor:
    """``alpha = mean |W|`` over kept weights, per channel ``(out,)`` or per tensor ``(1,)``."""
    rows = reduce_channels(weight.float(), per_channel)
    keep = None if keep is None else reduce_channels(keep, per_channel)
    return masked_mean_abs(rows, keep)


@register_quantizer(
    BinaryConfig,
    "1-bit weights alpha * sign(W), alpha = mean|W| per channel "
    "(XNOR-Net); QAT by straight-through estimator",
)
class Binary(Quantizer):
    def build(self, layer: LayerPlan, config: BinaryConfig) -> BinaryQuant:
        alpha = binary_alpha(layer.weight, layer.keep, config.per_channel)
        return BinaryQuant(alpha, layer.coded)
