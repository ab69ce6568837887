"""Uniform affine n-bit quantization (2..8 bits), per tensor, per output channel or per group
of ``group_size`` input columns of each channel.

``q = clamp(round(w / s) + z, qmin, qmax)``, ``w_hat = (q - z) * s``. Asymmetric: codes
``0 .. 2^b - 1`` over ``[min(lo, 0), max(hi, 0)]`` with an integer zero point, so 0 is exact
(pruned weights stay zero). Symmetric: codes ``-(2^(b-1) - 1) .. 2^(b-1) - 1``, ``z = 0``.
The range ``[lo, hi]`` comes from min/max, a percentile of the weights, or a search for the
clipping that minimises ``||W - w_hat||^2``. Training goes through a straight-through
estimator (QAT): the forward pass sees ``w_hat``, the gradient reaches the float ``W``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...state import register_parametrization
from ..base import FLOAT_BITS, QuantParametrization, channel_view, reduce_channels, ste
from ..config import GridOptions
from ..registry import LayerPlan, Quantizer, register_quantizer

MSE_GRID = 64  # candidate clipping ratios searched by range="mse"


@dataclass(frozen=True)
class UniformConfig(GridOptions):
    """Uniform affine n-bit quantization, 2..8 bits (default 8)."""

    METHOD: ClassVar[str] = "uniform"
    BITS: ClassVar[tuple[int, int]] = (2, 8)
    DEFAULT_BITS: ClassVar[int] = 8


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of the integer codes."""
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def grid(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point ``(C,)`` covering ``[lo, hi]`` (widened to contain 0)."""
    qmin, qmax = code_range(bits, symmetric)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.zeros_like(scale) if symmetric else (qmin - lo / scale).round().clamp(qmin, qmax)
    return scale, zero


def fake_quantize(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """``w_hat = (clamp(round(w / s) + z) - z) * s`` with ``s, z`` broadcast per channel."""
    qmin, qmax = code_range(bits, symmetric)
    return (torch.clamp(torch.round(w / scale) + zero, qmin, qmax) - zero) * scale


def weight_range(
    rows: torch.Tensor, keep: torch.Tensor | None, config: GridOptions, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` per row of ``rows (C, m)`` by ``config.range`` over the kept entries."""
    if config.range == "minmax":
        return rows.min(dim=1).values, rows.max(dim=1).values
    if config.range == "percentile":
        p = config.percentile / 100.0
        lo, hi = [], []
        for r, row in enumerate(rows):
            vals = row if keep is None else row[keep[r]]
            vals = vals if vals.numel() else row.new_zeros(1)
            q = torch.quantile(vals.double(), torch.tensor([1 - p, p], dtype=torch.float64))
            lo.append(q[0])
            hi.append(q[1])
        return torch.stack(lo).to(rows.dtype), torch.stack(hi).to(rows.dtype)
    return _mse_range(rows, keep, bits, config.symmetric)


def _mse_range(
    rows: torch.Tensor, keep: torch.Tensor | None, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip ``[a lo, a hi]`` with the ratio ``a`` in (0, 1] that minimises the squared error."""
    lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
    weight = torch.ones_like(rows) if keep is None else keep.to(rows.dtype)
    best_err = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for a in torch.linspace(1.0, 1.0 / MSE_GRID, MSE_GRID).tolist():
        scale, zero = grid(a * lo, a * hi, bits, symmetric)
        err = (
            (fake_quantize(rows, scale[:, None], zero[:, None], bits, symmetric) - rows) ** 2
            * weight
        ).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, a * lo, best_lo)
        best_hi = torch.where(better, a * hi, best_hi)
    return best_lo, best_hi


def fit_grid(
    layer: LayerPlan, config: GridOptions, bits: int, *, symmetric: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point ``(C,)`` for ``layer`` under ``config`` (C = rows or 1), or
    ``(C, G)`` with ``config.group_size``: G = ceil(fan_in / group_size) column groups."""
    symmetric = config.symmetric if symmetric is None else symmetric
    cfg = config.replace(symmetric=symmetric)
    rows = reduce_channels(layer.weight.float(), config.per_channel)
    keep = None if layer.keep is None else reduce_channels(layer.keep, config.per_channel)
    gs = config.group_size
    if not gs or layer.weight.dim() < 2 or gs >= rows.shape[1]:
        lo, hi = weight_range(rows, keep, cfg, bits)
        return grid(lo, hi, bits, symmetric)
    scales, zeros = [], []
    for start in range(0, rows.shape[1], gs):
        cols = slice(start, start + gs)
        lo, hi = weight_range(rows[:, cols], None if keep is None else keep[:, cols], cfg, bits)
        s, z = grid(lo, hi, bits, symmetric)
        scales.append(s)
        zeros.append(z)
    return torch.stack(scales, 1), torch.stack(zeros, 1)


def expand_grid(stat: torch.Tensor, weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """A ``(C,)`` statistic broadcast per channel, or a ``(C, G)`` one per column group,
    laid out like ``weight``."""
    if stat.dim() < 2:
        return channel_view(stat, weight)
    cols = torch.arange(weight[0].numel(), device=stat.device) // group_size
    return stat[:, cols].reshape(weight.shape)


@register_parametrization(
    "uniform", "uniform affine n-bit: scale + zero point per channel or tensor"
)
class UniformQuant(QuantParametrization):
    """``forward(W) = W + (w_hat(W) - W).detach()``; buffers ``scale``, ``zero_point`` ``(C,)``."""

    def __init__(
        self,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        bits: int,
        symmetric: bool,
        coded: int,
        group_size: int = 0,
    ) -> None:
        super().__init__()
        self.bits, self.symmetric, self.coded = int(bits), bool(symmetric), int(coded)
        self.group_size = int(group_size) if scale.dim() == 2 else 0
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("zero_point", zero_point.detach().float().clone())

    def grids(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point laid out like ``weight``."""
        s = expand_grid(self.scale, weight, self.group_size).to(weight.dtype)
        return s, expand_grid(self.zero_point, weight, self.group_size).to(weight.dtype)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        s, z = self.grids(weight)
        return ste(weight, fake_quantize(weight, s, z, self.bits, self.symmetric))

    def integer(self, weight: torch.Tensor) -> torch.Tensor:
        """The integer codes ``q`` (int16) of ``weight`` (the tensor under this parametrization)."""
        qmin, qmax = code_range(self.bits, self.symmetric)
        s, z = self.grids(weight)
        return torch.clamp(torch.round(weight / s) + z, qmin, qmax).to(torch.int16)

    def config(self) -> dict[str, Any]:
        out = {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "channels": self.scale.shape[0] if self.group_size else self.scale.numel(),
            "coded": self.coded,
        }
        if self.group_size:
            out.update(groups=self.scale.shape[1], group_size=self.group_size)
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any], original: torch.Tensor) -> UniformQuant:
        shape = (config["channels"], config["groups"]) if "groups" in config else config["channels"]
        zeros = torch.zeros(shape)
        return cls(
            zeros + 1, zeros, config["bits"], config["symmetric"], config["coded"],
            config.get("group_size", 0),
        )  # fmt: skip

    def index_bits(self) -> int:
        return self.coded * self.bits

    def codebook_bits(self) -> int:
        zero_bits = 0 if self.symmetric else self.bits
        return self.scale.numel() * (FLOAT_BITS + zero_bits)


@register_quantizer(
    UniformConfig,
    "uniform affine n-bit (2-8), per-tensor/per-channel, "
    "minmax/percentile/mse range, QAT by straight-through estimator",
)
class Uniform(Quantizer):
    def build(self, layer: LayerPlan, config: UniformConfig) -> UniformQuant:
        scale, zero = fit_grid(layer, config, layer.bits)
        return UniformQuant(
            scale, zero, layer.bits, config.symmetric, layer.coded, config.group_size
        )
