"""Residual quantization (Gong et al. 2014): k-means, then k-means of the residuals, t times.

The matrix view ``W (m, n)`` is cut into ``N = m n / d`` sub-vectors of width ``d``
(``d = 1``: scalar weights). Stage 1 clusters them into ``k = 2^b`` centroids, stage ``i``
clusters what stages ``1 .. i-1`` left over; ``w ~ c1[I1] + c2[I2] + ... + ct[It]``.
Storage, for ``t`` stages::

    bits = t (N log2 k + 32 k d)
    r = 32 m n / (t (m n log2 k / d + 32 k d))

Codebooks are ``nn.Parameter`` s; a pruned weight is held at 0 by a ``keep`` buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import check_positive_int
from ...state import register_parametrization
from ..cluster import layer_seed, vector_kmeans
from ..config import VectorOptions
from ..registry import LayerPlan, Quantizer, register_quantizer
from ..vectors import CodebookQuant, check_block_width, check_codebook_size


@dataclass(frozen=True)
class ResidualConfig(VectorOptions):
    """Residual quantization: ``stages`` t rounds of k-means, ``k = 2^bits`` (1..12 bits,
    default 4); codebook fine-tuning defaults to ``finetune_lr = 1e-4``."""

    METHOD: ClassVar[str] = "residual"
    BITS: ClassVar[tuple[int, int]] = (1, 12)
    DEFAULT_BITS: ClassVar[int] = 4
    FINETUNE_LR: ClassVar[float] = 1e-4

    stages: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("stages", self.stages)


@register_parametrization("residual", "residual quantization: t stacked codebooks on residuals")
class ResidualQuant(CodebookQuant):
    """``codebooks`` ``(t, k, d)`` trainable, ``indices`` ``(t, N)`` int16, optional ``keep``."""

    def decode(self) -> torch.Tensor:
        stages = torch.arange(self.codebooks.shape[0], device=self.indices.device)[:, None]
        return self.codebooks[stages, self.indices.long()].sum(dim=0)  # (N, d)

    def coded_weights(self) -> int:
        return self.indices.shape[1] * self.codebooks.shape[2]

    def config(self) -> dict[str, Any]:
        t, k, d = self.codebooks.shape
        return {"bits": self.bits, "stages": t, "k": k, "width": d, "masked": self.keep is not None}

    @classmethod
    def from_config(cls, config: dict[str, Any], original: torch.Tensor) -> ResidualQuant:
        t, k, d = config["stages"], config["k"], config["width"]
        keep = torch.ones_like(original, dtype=torch.bool) if config["masked"] else None
        idx = torch.zeros(t, original.numel() // d, dtype=torch.int16)
        return cls(torch.zeros(t, k, d), idx, config["bits"], keep)


def residual_codebooks(
    x: torch.Tensor, k: int, stages: int, *, seed: int = 0, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (N, d)`` -> ``(codebooks (t, k, d), indices (t, N))`` by k-means on the residuals."""
    residual, books, labels = x.clone(), [], []
    for t in range(stages):
        c, lab = vector_kmeans(residual, k, seed=seed + t, max_iter=max_iter)
        residual = residual - c[lab]
        books.append(c)
        labels.append(lab)
    return torch.stack(books), torch.stack(labels)


@register_quantizer(
    ResidualConfig,
    "residual quantization: --stages rounds of k-means on the "
    "residuals of sub-vectors of width --block-width",
)
class Residual(Quantizer):
    def check(self, layer: LayerPlan, config: ResidualConfig) -> None:
        blocks = check_block_width(layer, config.block_width, "residual quantization")
        check_codebook_size(layer, layer.weight.shape[0] * blocks, "residual quantization")

    def build(self, layer: LayerPlan, config: ResidualConfig) -> ResidualQuant:
        d = config.block_width
        x = layer.weight.float().reshape(-1, d)
        books, idx = residual_codebooks(
            x,
            2**layer.bits,
            config.stages,
            seed=layer_seed(config.seed, layer.name),
            max_iter=config.max_iter,
        )
        return ResidualQuant(books, idx, layer.bits, layer.keep)
