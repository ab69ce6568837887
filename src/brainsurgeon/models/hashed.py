"""HashedNets layer: a Linear layer whose weights share a small bucket vector.

Chen, Wilson, Tyree, Weinberger, Chen, "Compressing Neural Networks with the Hashing Trick"
(ICML 2015). The virtual weight matrix is ``V_ij = xi(i, j) * w[h(i, j)]`` with a bucket index
hash ``h: (i, j) -> {0..K-1}``, a sign hash ``xi: (i, j) -> {-1, +1}`` and ``K =
ceil(out * in / compression)`` trainable buckets. Both hashes are a fixed function of
``(i, j, seed)`` (splitmix64), recomputed on construction, so only the buckets and the bias are
stored: a run directory holds ``K + out`` numbers for this layer, not ``out * in``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic, platform independent)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def hash_indices(
    out_features: int, in_features: int, n_buckets: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket index ``h`` (out, in) int64 in ``[0, n_buckets)`` and sign ``xi`` (out, in) +-1.

    Deterministic in ``(out, in, n_buckets, seed)`` on every machine and torch version.
    """
    keys = np.arange(out_features * in_features, dtype=np.uint64)
    salt = _splitmix64(np.array([seed], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        h = _splitmix64(keys ^ salt)
        g = _splitmix64(h ^ np.uint64(0xD6E8FEB86659FD93))
    index = (h % np.uint64(n_buckets)).astype(np.int64).reshape(out_features, in_features)
    sign = np.where((g >> np.uint64(63)) == 0, 1.0, -1.0).astype(np.float32)
    return torch.from_numpy(index), torch.from_numpy(sign.reshape(out_features, in_features))


class HashedLinear(nn.Module):
    """``y = x V^T + b`` with ``V_ij = xi(i, j) * w[h(i, j)]`` (HashedNets).

    Shapes: input (N, in_features), output (N, out_features); trainable ``hashed_weight``
    (K,) with ``K = ceil(in * out / compression)`` and ``bias`` (out,). ``weight`` is the
    virtual (out, in) matrix, so code that reads ``module.weight`` (metrics, inspection) works.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        compression: float = 8.0,
        seed: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not compression >= 1:
            raise ConfigError(
                f"hashed layer compression must be >= 1, got {compression}; e.g. 300h8 in an "
                "mlp: spec shares each stored weight among ~8 virtual weights"
            )
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.seed = int(seed)
        self.n_buckets = math.ceil(self.in_features * self.out_features / float(compression))
        self.hashed_weight = nn.Parameter(torch.empty(self.n_buckets))
        self.bias = nn.Parameter(torch.empty(self.out_features)) if bias else None
        index, sign = hash_indices(self.out_features, self.in_features, self.n_buckets, self.seed)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("sign", sign, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(in), 1/sqrt(in)) as ``nn.Linear``'s default init."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.hashed_weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def weight(self) -> torch.Tensor:
        """The virtual weight matrix ``V`` (out, in); differentiable w.r.t. the buckets."""
        return self.sign.to(self.hashed_weight.dtype) * self.hashed_weight[self.index]

    @property
    def compression_factor(self) -> float:
        """Virtual weights per stored bucket: ``in * out / K``."""
        return self.in_features * self.out_features / self.n_buckets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"buckets={self.n_buckets}, compression={self.compression_factor:.2f}, "
            f"seed={self.seed}, bias={self.bias is not None}"
        )
