"""Global OBS (Hassibi & Stork 1993, "Second order derivatives for network pruning: Optimal
Brain Surgeon") as pure tensor functions of the weights ``w`` and the inverse Hessian ``H^-1``.

Removing weight ``q`` costs ``w_q^2 / (2 [H^-1]_qq)`` and the best update of the others is
``dw = -(w_q / [H^-1]_qq) H^-1 e_q``; removing a set ``Q`` at once,
``dw = -H^-1[:, Q] (H^-1[Q, Q])^-1 w_Q``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def obs_single(w: Tensor, Hinv: Tensor) -> tuple[int, Tensor]:
    """The best single removal: ``q = argmin w_q^2 / (2 [H^-1]_qq)`` and its update.

    ``w`` (P,), ``Hinv`` (P, P). Returns ``(q, dw)`` with ``dw = -(w_q / [H^-1]_qq) H^-1 e_q``,
    so ``(w + dw)[q] == 0``.
    """
    d = Hinv.diagonal()
    q = int(torch.argmin(w.pow(2) / d))
    dw = -(w[q] / d[q]) * Hinv[:, q]
    return q, dw


def obs_remove_set(w: Tensor, Hinv: Tensor, Q: Tensor) -> Tensor:
    """Zero the set ``Q`` and move the rest optimally: ``w - H^-1[:, Q] (H^-1[Q, Q])^-1 w_Q``.

    ``w`` (..., P) and ``Hinv`` (..., P, P) may carry leading batch dimensions (blocks of
    WoodFisher, rows of a layer); ``Q`` is a bool mask shaped like ``w`` (True = remove) or an
    index tensor for an unbatched ``w``. This minimises ``dw^T H dw`` subject to
    ``(w + dw)_Q = 0``; entries in ``Q`` come back exactly zero.
    """
    if Q.dtype != torch.bool:
        Q = torch.zeros_like(w, dtype=torch.bool).index_fill_(-1, Q.reshape(-1), True)
    q = Q.to(Hinv.dtype)
    # Embed H^-1[Q, Q] in a full-size SPD system: identity on the kept coordinates.
    M = Hinv * q.unsqueeze(-1) * q.unsqueeze(-2) + torch.diag_embed(1.0 - q)
    rhs = (w.to(Hinv.dtype) * q).unsqueeze(-1)
    L, info = torch.linalg.cholesky_ex(M)
    if bool(info.any()):
        z = torch.linalg.solve(M, rhs)
    else:  # two triangular solves (batched cholesky_solve is slow on CPU)
        z = torch.linalg.solve_triangular(L, rhs, upper=False)
        z = torch.linalg.solve_triangular(L.mT, z, upper=True)
    new = w.to(Hinv.dtype) - (Hinv @ z).squeeze(-1)
    return new.masked_fill(Q, 0.0).to(w.dtype)
