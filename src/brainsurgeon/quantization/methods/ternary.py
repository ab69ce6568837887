"""Ternary weight networks (TWN, Li, Zhang & Liu 2016): ``W_hat in {-alpha, 0, +alpha}``.

Threshold ``delta = 0.7 * mean|W|``; ``W_hat = alpha * sign(W) * 1[|W| > delta]`` with
``alpha = mean{|W_i| : |W_i| > delta}``, per output channel or per tensor. Stored as 2-bit
codes (``log2 3 = 1.58`` bits is reachable by packing 5 trits per byte; counted as 2 here)
plus one float per channel: about 16x smaller. Trained through a straight-through estimator.
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

THRESHOLD = 0.7


@dataclass(frozen=True)
class TernaryConfig(ScaleOptions):
    """Ternary weights, stored as 2-bit codes (``bits`` may only be 2)."""

    METHOD: ClassVar[str] = "ternary"
    BITS: ClassVar[tuple[int, int]] = (2, 2)
    DEFAULT_BITS: ClassVar[int] = 2


@register_parametrization("ternary", "ternary weights (TWN): alpha * sign(W) * 1[|W| > delta]")
class TernaryQuant(QuantParametrization):
    """``forward(W) = ste(W, alpha sign(W) 1[|W| > delta])``; buffers ``alpha``, ``delta (C,)``."""

    def __init__(self, alpha: torch.Tensor, delta: torch.Tensor, coded: int) -> None:
        super().__init__()
        self.bits, self.coded = 2, int(coded)
        self.register_buffer("alpha", alpha.detach().float().clone())
        self.register_buffer("delta", delta.detach().float().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        alpha = channel_view(self.alpha, weight).to(weight.dtype)
        delta = channel_view(self.delta, weight).to(weight.dtype)
        return ste(weight, alpha * torch.sign(weight) * (weight.abs() > delta).to(weight.dtype))

    def config(self) -> dict[str, Any]:
        return {"channels": self.alpha.numel(), "coded": self.coded}

    @classmethod
    def from_config(cls, config: dict[str, Any], original: torch.Tensor) -> TernaryQuant:
        ones = torch.ones(config["channels"])
        return cls(ones, ones, config["coded"])

    def index_bits(self) -> int:
        return 2 * self.coded

    def codebook_bits(self) -> int:
        return self.alpha.numel() * FLOAT_BITS


def ternary_params(
    weight: torch.Tensor, keep: torch.Tensor | None, per_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, delta)`` per channel ``(out,)`` or per tensor ``(1,)`` over kept weights."""
    rows = reduce_channels(weight.float(), per_channel)
    keep = None if keep is None else reduce_channels(keep, per_channel)
    delta = THRESHOLD * masked_mean_abs(rows, keep)
    above = rows.abs() > delta[:, None]
    alpha = (rows.abs() * above).sum(dim=1) / above.sum(dim=1).clamp_min(1)
    return alpha, delta


@register_quantizer(
    TernaryConfig,
    "ternary weights {-a, 0, +a}, threshold 0.7 mean|W| (TWN); QAT by straight-through estimator",
)
class Ternary(Quantizer):
    def build(self, layer: LayerPlan, config: TernaryConfig) -> TernaryQuant:
        alpha, delta = ternary_params(layer.weight, layer.keep, config.per_channel)
        return TernaryQuant(alpha, delta, layer.coded)
