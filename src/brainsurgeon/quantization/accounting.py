"""Storage accounting of quantized weights, per layer and in total.

Each quantizer parametrization reports its own ``storage()``: ``index_bits`` (the per-weight
codes) and ``codebook_bits`` (centroids, scales, zero points, 32 bits per float). Against
``32`` bits per float weight the ratio of a tensor with ``n`` coded weights is
``32 n / (index_bits + codebook_bits)``; for k-means with ``k`` centroids that is
``r = n b / (n log2 k + k b)`` with ``b = 32`` (Deep Compression). Product and residual
quantization give their formulas in :mod:`.product` and :mod:`.residual`. Weights left in
float (biases, skipped layers) count 32 bits each in the model totals.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from ..state import parametrizations_of
from .base import FLOAT_BITS


def report(model: nn.Module) -> dict[str, Any]:
    """``{"layers": [...], "total": {...}, "float_params", "model_bytes", "fp32_bytes", ...}``.

    Per layer: ``layer, kind, bits, weights, coded, bits_per_weight, index_bytes,
    codebook_bytes, bytes, fp32_bytes, ratio``. ``total`` sums the quantized tensors;
    ``model_bytes`` adds 4 bytes per float parameter left (biases, skipped layers).
    """
    layers, float_params, all_params = [], 0, 0
    for name, module in model.named_modules():
        if "parametrizations" in name.split("."):
            continue  # the state inside parametrizations is accounted by storage()
        for tensor, numel, storage in _tensors(module):
            all_params += numel
            if storage is None:
                float_params += numel
            else:
                layers.append(_row(f"{name}.{tensor}" if name else tensor, numel, storage))
    total = _total(layers)
    model_bytes = total["bytes"] + 4 * float_params
    return {
        "layers": layers,
        "total": total,
        "float_params": float_params,
        "model_bytes": model_bytes,
        "fp32_bytes": 4 * all_params,
        "model_ratio": 4 * all_params / max(model_bytes, 1),
    }


def _tensors(module: nn.Module):
    """``(name, numel, storage or None)`` for each tensor owned directly by ``module``."""
    for tensor, p in module.named_parameters(recurse=False):
        yield tensor, p.numel(), None
    if not parametrize.is_parametrized(module):
        return
    for tensor in module.parametrizations:
        quant = [p for p in parametrizations_of(module, tensor) if hasattr(p, "storage")]
        numel = getattr(module, tensor).numel()
        yield tensor, numel, quant[-1].storage() if quant else None


def _row(layer: str, numel: int, s: dict[str, Any]) -> dict[str, Any]:
    index_bytes = math.ceil(s["index_bits"] / 8)
    book_bytes = math.ceil(s["codebook_bits"] / 8)
    return {
        "layer": layer,
        "kind": s["kind"],
        "bits": s["bits"],
        "weights": numel,
        "coded": s["coded"],
        "bits_per_weight": s["bits_per_weight"],
        "index_bytes": index_bytes,
        "codebook_bytes": book_bytes,
        "bytes": index_bytes + book_bytes,
        "fp32_bytes": 4 * s["coded"],
        "ratio": s["ratio"],
        "total_bits": s["total_bits"],
    }


def _total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    coded = sum(r["coded"] for r in rows)
    bits = sum(r["total_bits"] for r in rows)
    out = {
        k: sum(r[k] for r in rows)
        for k in ("weights", "index_bytes", "codebook_bytes", "bytes", "fp32_bytes")
    }
    out.update(
        coded=coded,
        total_bits=bits,
        bits_per_weight=bits / max(coded, 1),
        ratio=FLOAT_BITS * coded / max(bits, 1),
    )
    return out
