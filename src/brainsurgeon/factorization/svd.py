"""Truncated SVD and rank choice as pure tensor functions.

A weight matrix ``W`` (m x n) is approximated by ``U_k S_k V_k^T``; storing ``U_k`` (m x k),
``S_k`` (k) and ``V_k`` (n x k) instead of ``W`` gives the compression rate
``m n / (k (m + n + 1))`` (Denton et al. 2014, "Exploiting Linear Structure Within
Convolutional Networks for Efficient Evaluation"). A conv weight (out, in, kh, kw) is treated
as the (out, in*kh*kw) matrix of its im2col form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class SVD:
    """``W = U diag(S) Vh`` in float64: U (m, r), S (r,) descending, Vh (r, n), r = min(m, n)."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    @classmethod
    def of(cls, matrix: torch.Tensor) -> SVD:
        u, s, vh = torch.linalg.svd(matrix.detach().to(torch.float64), full_matrices=False)
        return cls(u, s, vh)

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(left (m, k), right (k, n))`` with ``left @ right = U_k S_k V_k^T``.

        ``sqrt(S_k)`` goes to each side, so both factors have comparable scales (which suits
        later pruning or quantization of the two new layers).
        """
        root = self.S[:rank].sqrt()
        return self.U[:, :rank] * root, root[:, None] * self.Vh[:rank]

    def energy(self, rank: int) -> float:
        """Retained energy ``sum_{i<k} s_i^2 / sum_i s_i^2`` (1.0 for an all-zero matrix)."""
        total = float(self.S.pow(2).sum())
        return float(self.S[:rank].pow(2).sum()) / total if total > 0 else 1.0


def compression_rate(m: int, n: int, k: int) -> float:
    """``m n / (k (m + n + 1))``: the dense weight count over the stored ``U_k, S_k, V_k``."""
    return m * n / (k * (m + n + 1))


def max_shrinking_rank(m: int, n: int) -> int:
    """The largest rank whose factors are smaller than the dense matrix (rate > 1); may be 0."""
    return min((m * n - 1) // (m + n + 1), m, n)


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest ``k`` with ``sum_{i<k} s_i^2 >= energy * sum_i s_i^2`` (at least 1)."""
    sq = singular_values.to(torch.float64).pow(2)
    total = float(sq.sum())
    if total <= 0:
        return 1
    cumulative = torch.cumsum(sq, 0) / total
    k = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=torch.float64)))
    return min(k + 1, len(sq))


def rank_for_rate(m: int, n: int, rate: float) -> int:
    """The largest ``k`` whose rate ``m n / (k (m + n + 1))`` is at least ``rate`` (0 if none)."""
    return min(math.floor(m * n / (rate * (m + n + 1)) + 1e-9), m, n)


def check_rank(name: str, m: int, n: int, rank: int) -> None:
    """Refuse a rank that is not in ``[1, min(m, n)]`` or that would not shrink the layer."""
    if rank <= 0 or rank > min(m, n):
        raise ConfigError(
            f"rank {rank} for {name} ({m} x {n}) is outside [1, min(m, n)] = [1, {min(m, n)}]; "
            f"choose a rank between 1 and {max_shrinking_rank(m, n) or 1}"
        )
    if compression_rate(m, n, rank) <= 1:
        best = max_shrinking_rank(m, n)
        fix = f"use a rank <= {best}" if best else "leave this layer out (--layers)"
        raise ConfigError(
            f"rank {rank} for {name} ({m} x {n}) would grow the layer: k (m + n + 1) = "
            f"{rank * (m + n + 1)} >= m n = {m * n} (rate {compression_rate(m, n, rank):.2f}); "
            f"{fix}"
        )
