"""Product quantization of weight matrices (Gong, Liu, Yang & Bourdev 2014).

The matrix view ``W (m, n)`` is split into ``s = n / d`` column blocks of width ``d``; the
``m`` rows of each block (vectors of length ``d``) are clustered into ``k = 2^b`` centroids.
Storage: ``s`` codebooks of ``k d`` floats plus one ``b``-bit index per row and block::

    bits = m s log2 k + 32 k d s = m s log2 k + 32 k n
    r = 32 m n / (m s log2 k + 32 k n)

Codebooks are ``nn.Parameter`` s (fine-tuning trains shared sub-vectors, tied by
construction). A weight pruned before quantizing is held at 0 by a ``keep`` buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...state import register_parametrization
from ..base import as_matrix
from ..cluster import layer_seed, vector_kmeans
from ..config import VectorOptions
from ..registry import LayerPlan, Quantizer, register_quantizer
from ..vectors import CodebookQuant, check_block_width, check_codebook_size


@dataclass(frozen=True)
class ProductConfig(VectorOptions):
    """Product quantization, ``k = 2^bits`` centroids per column block (1..12 bits, default 8);
    codebook fine-tuning defaults to ``finetune_lr = 1e-3``."""

    METHOD: ClassVar[str] = "product"
    BITS: ClassVar[tuple[int, int]] = (1, 12)
    DEFAULT_BITS: ClassVar[int] = 8
    FINETUNE_LR: ClassVar[float] = 1e-3


@register_parametrization("product", "product quantization: s codebooks of k sub-vectors + indices")
class ProductQuant(CodebookQuant):
    """``codebooks`` ``(s, k, d)`` trainable, ``indices`` ``(m, s)`` int16, optional ``keep``."""

    def decode(self) -> torch.Tensor:
        blocks = torch.arange(self.codebooks.shape[0], device=self.indices.device)[None, :]
        return self.codebooks[blocks, self.indices.long()]  # (m, s, d)

    def coded_weights(self) -> int:
        return self.indices.numel() * self.codebooks.shape[2]

    def config(self) -> dict[str, Any]:
        s, k, d = self.codebooks.shape
        return {"bits": self.bits, "blocks": s, "k": k, "width": d, "masked": self.keep is not None}

    @classmethod
    def from_config(cls, config: dict[str, Any], original: torch.Tensor) -> ProductQuant:
        s, k, d = config["blocks"], config["k"], config["width"]
        keep = torch.ones_like(original, dtype=torch.bool) if config["masked"] else None
        idx = torch.zeros(original.shape[0], s, dtype=torch.int16)
        return cls(torch.zeros(s, k, d), idx, config["bits"], keep)


@register_quantizer(
    ProductConfig,
    "product quantization: k-means the rows of each column block "
    "of width --block-width (Gong et al. 2014)",
)
class Product(Quantizer):
    def check(self, layer: LayerPlan, config: ProductConfig) -> None:
        check_block_width(layer, config.block_width, "product quantization")
        check_codebook_size(layer, layer.weight.shape[0], "product quantization")

    def build(self, layer: LayerPlan, config: ProductConfig) -> ProductQuant:
        d, k = config.block_width, 2**layer.bits
        w = as_matrix(layer.weight.float())
        m, s = w.shape[0], w.shape[1] // d
        blocks = w.reshape(m, s, d)
        seed = layer_seed(config.seed, layer.name)
        books, labels = [], []
        for j in range(s):
            c, lab = vector_kmeans(blocks[:, j, :], k, seed=seed + j, max_iter=config.max_iter)
            books.append(c)
            labels.append(lab)
        return ProductQuant(torch.stack(books), torch.stack(labels, dim=1), layer.bits, layer.keep)
