"""Inference runtimes: bake compression state and run pruned layers from sparse storage::

    fast = to_inference(pruned)             # dense layers, as fast as the unpruned model
    small = to_inference(pruned, "sparse")  # Linear layers >= 90% sparse stored in CSR

When the sparse runtime pays (one thread, measured by ``benchmarks/sparse_runtime.py``,
details in :mod:`brainsurgeon.runtime.sparse`): wide layers (4096) from ~80% sparsity at
batch 1 and ~60% at batch 64; LeNet-sized layers (784x300) from ~90-95% at batch 1 and ~80%
at batch 64; small layers (300x100) at batch 1 never, the per-call overhead outweighs the
dense GEMV. Baking alone (``to_inference`` dense) removes the parametrization cost: a
92%-pruned LeNet-300-100 at batch 1 went from 0.57 ms as loaded to 0.11 ms.
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
