"""Shared pieces of every quantizer: the parametrization base, storage accounting, the STE.

Every quantizer's state is a :class:`QuantParametrization` on ``module.weight``: buffers for
integer codes, scales, indices; ``nn.Parameter`` s for codebooks (so centroid fine-tuning is
plain autograd). Weights are handled through their matrix view ``(out_channels, fan_in)``:
``W.reshape(W.shape[0], -1)`` for Linear and Conv weights alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..state import StatefulParametrization

FLOAT_BITS = 32  # bits of one float32 codebook entry, scale or original weight


class QuantParametrization(StatefulParametrization):
    """Base of quantizer state; subclasses implement ``forward``, ``config``, ``from_config``.

    ``coded``: number of weights that carry a code (the kept weights when the tensor was
    pruned before quantizing; positions of pruned weights belong to the sparse encoding).
    """

    bits: int = 0
    coded: int = 0

    def index_bits(self) -> int:
        """Bits of the per-weight codes."""
        raise NotImplementedError

    def codebook_bits(self) -> int:
        """Bits of everything shared: centroids, scales, zero points."""
        raise NotImplementedError

    def storage(self) -> dict[str, Any]:
        """``{"bits_per_weight", "index_bits", "codebook_bits", "total_bits", ...}`` of this tensor.

        ``bits_per_weight = total_bits / coded``; ``ratio = 32 * coded / total_bits``.
        """
        index, book = int(self.index_bits()), int(self.codebook_bits())
        total = index + book
        return {
            "kind": self.kind,
            "bits": int(self.bits),
            "coded": int(self.coded),
            "index_bits": index,
            "codebook_bits": book,
            "total_bits": total,
            "bits_per_weight": total / max(self.coded, 1),
            "ratio": FLOAT_BITS * self.coded / max(total, 1),
        }

    def extra_repr(self) -> str:
        s = self.storage()
        return f"bits={self.bits}, coded={self.coded}, {s['bits_per_weight']:.3f} bits/weight"


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``(out, fan_in)`` view of a Linear ``(out, in)`` or Conv ``(out, in, *k)`` weight."""
    return weight.reshape(weight.shape[0], -1)


def ste(weight: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: the value of ``quantized``, the gradient of ``weight``."""
    return weight + (quantized - weight).detach()


def channel_view(stat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-channel ``(C,)`` statistic (C = 1 or out_channels) over ``weight``."""
    return stat.reshape(-1, *([1] * (weight.dim() - 1)))


def reduce_channels(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``(C, m)`` rows to reduce over: one per output channel, or one for the whole tensor
    (always for a 1-D tensor such as a bias, where a "channel" would be one number)."""
    return as_matrix(weight) if per_channel and weight.dim() > 1 else weight.reshape(1, -1)


def masked_mean_abs(rows: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Row-wise mean of ``|rows|`` over kept entries: ``(C, m) -> (C,)`` (0 for empty rows)."""
    w = rows.abs()
    if keep is None:
        return w.mean(dim=1)
    k = keep.reshape(rows.shape).to(w.dtype)
    return (w * k).sum(dim=1) / k.sum(dim=1).clamp_min(1.0)


def code_bits(levels: int) -> int:
    """Bits to store one of ``levels`` codes: ``ceil(log2 levels)``."""
    return max(1, math.ceil(math.log2(levels)))
