"""Inference runtimes: bake compression state and run pruned layers from sparse storage::

    fast = to_inference(pruned)             # dense layers, as fast as the unpruned model
    small = to_inference(pruned, "sparse")  # Linear layers >= 90% sparse stored in CSR

When the sparse runtime pays (measured, one thread, ``benchmarks/sparse_runtime.py``): large
layers (1024 wide and up) from ~80% sparsity at batch 1 and ~70% at batch 64; LeNet-sized
layers (784x300) only from ~90%; tiny layers (< ~50k weights) at batch 1 never, there the
per-call overhead outweighs the dense GEMV. Memory falls below dense below ~50% density.
"""

from __future__ import annotations

from .convert import (
    DEFAULT_MIN_SPARSITY,
    RUNTIMES,
    register_runtime,
    replaceable_linears,
    to_inference,
    weight_sparsity,
)
from .sparse import SparseLinear

__all__ = [
    "DEFAULT_MIN_SPARSITY",
    "RUNTIMES",
    "SparseLinear",
    "register_runtime",
    "replaceable_linears",
    "to_inference",
    "weight_sparsity",
]
