"""GPTQ (Frantar, Ashkboos, Hoefler & Alistarh 2023): layer-wise OBS with ``quant(w)`` in
place of 0 (OBQ), one column order shared by every row.

Columns of ``W`` (rows, cols) are fixed left to right; each column's error is propagated to
the columns on its right through the upper Cholesky factor ``U`` of ``H^-1`` (``U^T U =
H^-1``, ``H = 2 X X^T / N``), inside a block of 128 columns at once and to the rest of the
matrix once per block (lazy batch updates). ``act_order`` fixes the columns in order of
decreasing ``H_jj`` instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import ConfigError
from .layer_hessian import as_work, check_keep, damped_inverse_cholesky

Quantizer = Callable[[Tensor, int], Tensor]  # (column (rows,), column index j) -> (rows,)


def _quantized(quantize: Quantizer, col: Tensor, j: int, keep: Tensor | None) -> Tensor:
    q = quantize(col.clone(), j).to(col.dtype)
    if q.shape != col.shape:
        raise ConfigError(
            f"quantize(column, j) must return a tensor of shape {tuple(col.shape)}, "
            f"got {tuple(q.shape)}"
        )
    return q if keep is None else q.masked_fill(~keep[:, j], 0.0)


def gptq(
    W: Tensor,
    H: Tensor,
    quantize: Quantizer,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    keep: Tensor | None = None,
    act_order: bool = False,
) -> Tensor:
    """GPTQ: quantize ``W`` column by column, compensating each error with the rest (OBQ).

    ``W`` (rows, cols); ``H`` (cols, cols) ``= 2 X X^T / N`` of the layer inputs;
    ``quantize(col (rows,), j) -> (rows,)`` returns the quantized values of column ``j`` (set
    its scales from ``W`` beforehand). ``keep`` (rows, cols) bool: entries where it is False
    are forced to exactly 0 (pruned weights stay pruned). With ``e = (w_j - q_j) / U_jj`` the
    columns to the right receive ``W[:, j:] -= e U[j, j:]``. ``act_order``: fix the columns
    in order of decreasing ``H_jj`` (the inputs with the most energy first, while the most
    columns are left to absorb their error; "desc_act" in AutoGPTQ); ``quantize`` still gets
    the original column index, so static group grids stay those of the original columns.
    Returns ``W_q`` (rows, cols) in ``W``'s dtype.
    """
    if int(block_size) < 1:
        raise ConfigError(f"block_size must be a positive number of columns, got {block_size}")
    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True).to(W.device)
        inverse = torch.argsort(perm)
        Wq = gptq(
            W[:, perm],
            H[perm][:, perm],
            lambda col, j: quantize(col, int(perm[j])),
            block_size=block_size,
            damp=damp,
            keep=None if keep is None else keep[:, perm],
        )
        return Wq[:, inverse]
    work, H = as_work(W, H)
    U, dead = damped_inverse_cholesky(H, damp)
    work[:, dead] = 0.0
    keep = None if keep is None else check_keep(keep, W)
    cols = work.shape[1]
    out = torch.zeros_like(work)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, U1 = work[:, i1:i2].clone(), U[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            q = _quantized(quantize, W1[:, i], i1 + i, keep)
            e = (W1[:, i] - q) / U1[i, i]
            out[:, i1 + i] = q
            W1[:, i:].addr_(e, U1[i, i:], alpha=-1.0)
            err1[:, i] = e
        work[:, i2:].addmm_(err1, U[i1:i2, i2:], alpha=-1.0)
    return out.to(W.dtype)
