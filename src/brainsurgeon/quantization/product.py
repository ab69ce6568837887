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

from typing import Any

import torch
from torch import nn

from ..state import register_parametrization
from .base import FLOAT_BITS, QuantParametrization, as_matrix
from .cluster import vector_kmeans
from .config import QuantConfig
from .kmeans import layer_seed
from .registry import QUANTIZERS, LayerPlan, Quantizer
from .vectors import check_block_width, check_codebook_size


@register_parametrization("product", "product quantization: s codebooks of k sub-vectors + indices")
class ProductQuant(QuantParametrization):
    """``codebooks`` ``(s, k, d)`` trainable, ``indices`` ``(m, s)`` int16, optional ``keep``."""

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
        self.coded = self.indices.shape[0] * self.indices.shape[1] * self.codebooks.shape[2]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        s = self.codebooks.shape[0]
        blocks = torch.arange(s, device=self.indices.device)[None, :]
        out = self.codebooks[blocks, self.indices.long()].reshape(weight.shape).to(weight.dtype)
        return out if self.keep is None else out * self.keep

    def config(self) -> dict[str, Any]:
        s, k, d = self.codebooks.shape
        return {"bits": self.bits, "blocks": s, "k": k, "width": d, "masked": self.keep is not None}

    @classmethod
    def from_config(cls, config: dict[str, Any], original: torch.Tensor) -> ProductQuant:
        s, k, d = config["blocks"], config["k"], config["width"]
        keep = torch.ones_like(original, dtype=torch.bool) if config["masked"] else None
        idx = torch.zeros(original.shape[0], s, dtype=torch.int16)
        return cls(torch.zeros(s, k, d), idx, config["bits"], keep)

    def index_bits(self) -> int:
        return self.indices.numel() * self.bits

    def codebook_bits(self) -> int:
        return self.codebooks.numel() * FLOAT_BITS


@QUANTIZERS.register(
    "product",
    "product quantization: k-means the rows of each column block "
    "of width --block-width (Gong et al. 2014)",
)
class Product(Quantizer):
    bits_range = (1, 12)
    default_bits = 8
    finetune_lr = 1e-3

    def check(self, layer: LayerPlan, config: QuantConfig) -> None:
        check_block_width(layer, config.block_width, "product quantization")
        check_codebook_size(layer, layer.weight.shape[0], "product quantization")

    def build(self, layer: LayerPlan, config: QuantConfig) -> ProductQuant:
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
