"""Checks shared by the vector quantizers (product, residual): block width and codebook size."""

from __future__ import annotations

from ..errors import ConfigError
from .registry import LayerPlan


def check_block_width(layer: LayerPlan, width: int, method: str) -> int:
    """Number of column blocks ``s = fan_in / d``; a clear error if ``d`` does not divide it."""
    fan_in = layer.weight[0].numel()
    if fan_in % width:
        divisors = [d for d in range(1, min(fan_in, 64) + 1) if fan_in % d == 0]
        raise ConfigError(
            f"{method} block width {width} does not divide the {fan_in} input columns of "
            f"{layer.name}; choose a divisor, e.g. --block-width "
            f"{', '.join(map(str, divisors[:8]))} (or skip the layer)"
        )
    return fan_in // width


def check_codebook_size(layer: LayerPlan, vectors: int, method: str) -> None:
    """``k = 2^bits`` must not exceed the number of vectors clustered together."""
    k = 2**layer.bits
    if k > vectors:
        most = max(vectors.bit_length() - 1, 0)
        raise ConfigError(
            f"{method} with {layer.bits} bits needs k={k} centroids but {layer.name} has only "
            f"{vectors} vectors per codebook; use at most {most} bits there "
            f"(e.g. --per-layer-bits {layer.name}={most}) or skip it"
        )
