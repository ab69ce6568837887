"""Pure tensor solvers: tensors in, tensors out; no modules, hooks or data loading.

Below :mod:`brainsurgeon.curvature`, :mod:`brainsurgeon.pruning` and
:mod:`brainsurgeon.quantization`, which all use them; they import nothing of the package but
its errors.

==========================  ================================================================
``obs_single``              global OBS: the best single removal and its update
``obs_remove_set``          global OBS: remove a set, ``w - H^-1[:, Q] (H^-1[Q, Q])^-1 w_Q``
``inverse_from_gram``       ``(lam I + G^T G / N)^-1`` by Cholesky (WoodFisher blocks)
``inverse_from_vectors``    the same by the Woodbury identity, for fewer vectors than ``B``
``damped_inverse_cholesky`` ``U`` with ``U^T U = (H + damp mean(diag H) I)^-1`` (layer-wise)
``obc_prune``               exact greedy layer-wise OBS per row (OBC)
``layer_obs_update``        best layer reconstruction for a given mask
``sparsegpt``               SparseGPT: blocked layer-wise pruning, unstructured or N:M
``gptq``                    GPTQ: blocked layer-wise quantization
==========================  ================================================================
"""

from __future__ import annotations

from .gptq import Quantizer, gptq
from .layer_hessian import damped_inverse_cholesky
from .obc import layer_obs_update, obc_prune
from .obs import obs_remove_set, obs_single
from .sparsegpt import sparsegpt
from .woodbury import inverse_from_gram, inverse_from_vectors

__all__ = [
    "Quantizer",
    "damped_inverse_cholesky",
    "gptq",
    "inverse_from_gram",
    "inverse_from_vectors",
    "layer_obs_update",
    "obc_prune",
    "obs_remove_set",
    "obs_single",
    "sparsegpt",
]
