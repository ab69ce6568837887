"""k-means weight sharing (Han, Mao & Dally, Deep Compression, ICLR 2016).

Each layer's weights are clustered into ``k = 2^b`` centroids; a weight stores a ``b``-bit
index, the layer stores ``k`` float centroids. For ``n`` weights of ``B = 32`` bits the
compression rate is ``r = n B / (n log2 k + k B)``.

State: ``codebook`` ``(k,)`` is an ``nn.Parameter`` and ``indices`` (int16, shape of W) a
buffer; ``forward`` ignores the float original and returns ``codebook[indices]``. So weights
that share a centroid are tied by construction, and autograd gives exactly Han's centroid
gradient ``dL/dC_k = sum_ij dL/dW_ij 1[I_ij = k]``: fine-tuning trains the centroids (the
float original gets no gradient and is kept only as the pre-quantization reference).
A weight pruned before quantizing takes no centroid: its index is the sentinel ``k``, which
decodes to an exact 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import ConfigError, RunDirError
from ...state import register_parametrization
from ..base import FLOAT_BITS, QuantParametrization
from ..cluster import layer_seed, lloyd, scalar_init
from ..config import ClusterOptions, one_of
from ..registry import LayerPlan, Quantizer, register_quantizer

INITS = ("linear", "random", "density")


@dataclass(frozen=True)
class KMeansConfig(ClusterOptions):
    """k-means weight sharing, ``k = 2^bits`` centroids per tensor (1..8 bits, default 5).

    ``init``: linear | random | density (Han et al.). Centroid fine-tuning defaults to
    ``finetune_lr = 1e-4``: a centroid's gradient sums over ~n/k weights.
    """

    METHOD: ClassVar[str] = "kmeans"
    BITS: ClassVar[tuple[int, int]] = (1, 8)
    DEFAULT_BITS: ClassVar[int] = 5
    FINETUNE_LR: ClassVar[float] = 1e-4

    init: str = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("init", self.init, INITS)


@register_parametrization("kmeans", "k-means weight sharing: trainable codebook + int16 indices")
class KMeansQuant(QuantParametrization):
    """``forward(W) = [codebook, 0][indices]``; ``codebook (k,)`` trainable, int16 ``indices``."""

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self.codebook = nn.Parameter(codebook.detach().float().clone())
        self.register_buffer("indices", indices.detach().to(torch.int16).clone())
        self.coded = int((self.indices < self.codebook.numel()).sum())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.codebook, self.codebook.new_zeros(1)])
        return table[self.indices.long()].to(weight.dtype)

    def config(self) -> dict[str, Any]:
        return {"bits": self.bits, "k": self.codebook.numel()}

    @classmethod
    def from_config(cls, config: dict[str, Any], original: torch.Tensor) -> KMeansQuant:
        return cls(
            torch.zeros(config["k"]), torch.zeros_like(original, dtype=torch.int16), config["bits"]
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        k = self.codebook.numel()
        if (
            self.indices.numel()
            and not 0 <= int(self.indices.min()) <= int(self.indices.max()) <= k
        ):
            raise RunDirError(
                f"{prefix}indices hold values outside 0..{k} (the codebook has {k} entries and "
                "one zero slot); the weights are damaged, re-create the run"
            )
        self.coded = int((self.indices < k).sum())

    def index_bits(self) -> int:
        return self.coded * self.bits

    def codebook_bits(self) -> int:
        return self.codebook.numel() * FLOAT_BITS


def kmeans_codebook(
    values: torch.Tensor, k: int, init: str, *, seed: int = 0, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster 1-D ``values (n,)`` into ``k`` centroids: ``(codebook (k,), labels (n,))``.

    Values that already take at most ``k`` distinct levels are their own codebook (so
    quantizing a quantized layer changes nothing); unused entries repeat the last level.
    """
    levels = torch.unique(values)
    if levels.numel() <= k:
        codebook = torch.cat([levels, levels[-1:].expand(k - levels.numel())])
        return codebook, torch.searchsorted(levels, values)
    start = scalar_init(values, k, init, seed)
    centroids, labels = lloyd(values.reshape(-1, 1), start, max_iter)
    return centroids[:, 0], labels


@register_quantizer(
    KMeansConfig,
    "k-means weight sharing, k = 2^bits centroids per layer, "
    "linear/random/density init, centroid fine-tuning (Deep Compression)",
)
class KMeans(Quantizer):
    def check(self, layer: LayerPlan, config: KMeansConfig) -> None:
        k = 2**layer.bits
        if k > layer.coded:
            most = max(layer.coded.bit_length() - 1, 0)
            raise ConfigError(
                f"kmeans with {layer.bits} bits needs k={k} centroids but {layer.name} has only "
                f"{layer.coded} weights to cluster; use at most {most} bits there "
                f"(e.g. --per-layer-bits {layer.name}={most}) or exclude it"
            )

    def build(self, layer: LayerPlan, config: KMeansConfig) -> KMeansQuant:
        weight, k = layer.weight.float(), 2**layer.bits
        keep = torch.ones_like(weight, dtype=torch.bool) if layer.keep is None else layer.keep
        codebook, labels = kmeans_codebook(
            weight[keep],
            k,
            config.init,
            seed=layer_seed(config.seed, layer.name),
            max_iter=config.max_iter,
        )
        indices = torch.full(weight.shape, k, dtype=torch.int16, device=weight.device)
        indices[keep] = labels.to(torch.int16)
        return KMeansQuant(codebook, indices, layer.bits)
