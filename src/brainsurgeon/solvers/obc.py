"""OBC (Frantar & Alistarh 2022, "Optimal Brain Compression"): exact layer-wise OBS per row.

Layer-wise OBS minimises ``||W X - W' X||^2`` row by row, with ``H = 2 X X^T / N`` (cols x
cols) shared by every row. OBC runs the greedy OBS loop exactly in each row, downdating
``H^-1`` after every removal; :func:`layer_obs_update` is the best reconstruction for a
given mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layer_hessian import as_work, check_keep, check_target, damped_inverse_cholesky
from .obs import obs_remove_set


def obc_prune(
    W: Tensor,
    H: Tensor,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    *,
    damp: float = 0.01,
    keep: Tensor | None = None,
    row_batch: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact OBC: greedy OBS per row with ``H^-1`` downdated after every removal.

    ``W`` (rows, cols), ``H`` (cols, cols). Each row removes, one at a time, the weight with
    the lowest ``w_q^2 / [H^-1]_qq`` and updates the rest; ``H^-1 <- H^-1 - H^-1 e_q e_q^T
    H^-1 / [H^-1]_qq``. Unstructured: every row's greedy trace is recorded and the
    ``round(sparsity * rows * cols)`` cheapest removals are taken over all rows (prefixes of
    each trace, with the trace made non-decreasing); N:M: each row keeps N per group.
    Cost ``O(rows * cols^3)``: for small layers. Returns ``(W_new, keep_mask)``.
    """
    work, H = as_work(W, H)
    rows, cols = work.shape
    sparsity, nm = check_target(cols, sparsity, nm)
    keep = check_keep(keep, W) if keep is not None else torch.ones_like(work, dtype=torch.bool)
    U, dead = damped_inverse_cholesky(H, damp)
    work[:, dead] = 0.0
    Hinv = U.T @ U
    counts = _nm_counts(keep, nm) if nm is not None else None
    steps = int(counts.max()) if nm is not None else cols
    batch = row_batch or max(1, int(2**24 // max(cols * cols, 1)))
    orders, losses = [], []
    for r0 in range(0, rows, batch):
        o, loss = _obc_trace(work[r0 : r0 + batch], Hinv, keep[r0 : r0 + batch], steps, nm)
        orders.append(o)
        losses.append(loss)
    order, loss = torch.cat(orders), torch.cat(losses)
    if nm is None:
        counts = _allocate(loss, keep, sparsity)
    ranks = torch.arange(steps, device=work.device).unsqueeze(0)
    take = ranks < counts.to(work.device).unsqueeze(1)
    pruned = torch.zeros_like(keep)
    pruned[
        torch.arange(rows, device=work.device).unsqueeze(1).expand_as(order)[take], order[take]
    ] = True
    new = torch.empty_like(work)
    for r0 in range(0, rows, batch):
        sl = slice(r0, r0 + batch)
        new[sl] = obs_remove_set(work[sl], Hinv.expand(work[sl].shape[0], cols, cols), pruned[sl])
    return new.to(W.dtype), ~pruned


def _obc_trace(w: Tensor, Hinv: Tensor, keep: Tensor, steps: int, nm) -> tuple[Tensor, Tensor]:
    """Greedy removal order (rows, steps) and each step's loss ``w_q^2 / (2 [H^-1]_qq)``."""
    w = w.clone()
    r, c = w.shape
    Hi = Hinv.expand(r, c, c).clone()
    removed = torch.zeros_like(w, dtype=torch.bool)
    ar = torch.arange(r, device=w.device)
    order = torch.zeros(r, steps, dtype=torch.long, device=w.device)
    loss = torch.zeros(r, steps, dtype=w.dtype, device=w.device)
    for t in range(steps):
        d = Hi.diagonal(dim1=1, dim2=2)
        s = w.pow(2) / d
        if nm is not None:
            full = removed.view(r, -1, nm[1]).sum(-1, keepdim=True) >= nm[1] - nm[0]
            s = s.masked_fill(full.expand(-1, -1, nm[1]).reshape(r, c), float("inf"))
        s = s.masked_fill(~keep, -1.0).masked_fill(removed, float("inf"))
        q = s.argmin(1)
        order[:, t], loss[:, t] = q, s[ar, q].clamp_min(0) / 2
        hq, dq = Hi[ar, :, q], d[ar, q]
        w -= (w[ar, q] / dq).unsqueeze(1) * hq
        w[ar, q] = 0.0
        Hi.baddbmm_(hq.unsqueeze(2), (hq / dq.unsqueeze(1)).unsqueeze(1), alpha=-1.0)
        removed[ar, q] = True
    return order, loss


def _nm_counts(keep: Tensor, nm: tuple[int, int]) -> Tensor:
    """Removals per row for N:M: ``M - N`` per group, or more where ``keep`` already prunes more."""
    n, m = nm
    forced = (~keep).view(keep.shape[0], -1, m).sum(-1)
    return forced.clamp_min(m - n).sum(1)


def _allocate(loss: Tensor, keep: Tensor, sparsity: float) -> Tensor:
    """How many of each row's trace to take: the globally cheapest prefixes, exact total."""
    rows, cols = keep.shape
    forced = (~keep).sum(1)
    total = max(round(sparsity * rows * cols), int(forced.sum()))
    mono = torch.cummax(loss, dim=1).values
    # Forced (already pruned) entries come first in each trace at cost 0.
    ranks = torch.arange(cols, device=loss.device).unsqueeze(0)
    mono = mono.masked_fill(ranks < forced.unsqueeze(1), -1.0)
    flat = torch.argsort(mono.flatten(), stable=True)[:total]
    return torch.bincount(flat // cols, minlength=rows)


def layer_obs_update(
    W: Tensor, H: Tensor, keep: Tensor, *, damp: float = 0.01, row_batch: int | None = None
) -> Tensor:
    """Best reconstruction of ``W X`` with the entries where ``keep`` is False set to 0.

    Row by row, ``w' = w - H^-1[:, Q] (H^-1[Q, Q])^-1 w_Q`` with the damped layer Hessian
    ``H`` (cols, cols); ``W`` and ``keep`` (rows, cols). Memory ``row_batch * cols^2``.
    """
    work, H = as_work(W, H)
    keep = check_keep(keep, W)
    U, dead = damped_inverse_cholesky(H, damp)
    Hinv = U.T @ U
    rows, cols = work.shape
    batch = row_batch or max(1, int(2**24 // max(cols * cols, 1)))
    out = torch.empty_like(work)
    for r0 in range(0, rows, batch):
        sl = slice(r0, r0 + batch)
        out[sl] = obs_remove_set(work[sl], Hinv.expand(work[sl].shape[0], cols, cols), ~keep[sl])
    return out.to(W.dtype)
