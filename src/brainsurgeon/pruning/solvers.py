"""OBS-family solvers as pure tensor functions (no modules, no data loading).

Global OBS (Hassibi & Stork 1993, "Second order derivatives for network pruning: Optimal
Brain Surgeon"): removing weight ``q`` costs ``w_q^2 / (2 [H^-1]_qq)`` and the best update
of the others is ``dw = -(w_q / [H^-1]_qq) H^-1 e_q``; removing a set ``Q`` at once,
``dw = -H^-1[:, Q] (H^-1[Q, Q])^-1 w_Q``.

Layer-wise OBS minimises ``||W X - W' X||^2`` row by row, with ``H = 2 X X^T / N`` (cols x
cols) shared by every row. OBC (Frantar & Alistarh 2022, "Optimal Brain Compression") runs
the greedy OBS loop exactly per row; SparseGPT (Frantar & Alistarh 2023) and GPTQ (Frantar
et al. 2023) fix one column order for all rows and propagate each column's error to the
columns on its right through the upper Cholesky factor ``U`` of ``H^-1`` (``U^T U = H^-1``),
in blocks of 128 columns. GPTQ puts ``quant(w)`` where SparseGPT puts 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import ConfigError, NumericalError, check_fraction

Quantizer = Callable[[Tensor, int], Tensor]  # (column (rows,), column index j) -> (rows,)


# --------------------------------------------------------------------------- global OBS


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


# --------------------------------------------------------------------------- layer-wise


def damped_inverse_cholesky(H: Tensor, damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """``(U, dead)``: upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1`` and dead inputs.

    ``H`` (cols, cols). Inputs that never fire (``H_jj == 0``) get ``H_jj = 1`` so ``H`` stays
    invertible (their weights do not matter and are set to zero by the callers), as in the
    SparseGPT/GPTQ reference code.
    """
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ConfigError(f"H must be a square (cols, cols) matrix, got shape {tuple(H.shape)}")
    if not damp >= 0:
        raise ConfigError(f"damp must be >= 0 (a fraction of mean(diag H)), got {damp}")
    H = H.clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * H.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(H)
    if bool(info):
        raise NumericalError(
            f"the layer Hessian H = 2 X X^T / N is not positive definite after damping "
            f"{damp:g} * mean(diag H); raise damp (e.g. damp=0.1) or give more calibration samples"
        )
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if bool(info):
        raise NumericalError(f"H^-1 lost positive definiteness in float; raise damp above {damp:g}")
    return U, dead


def _as_work(W: Tensor, H: Tensor) -> tuple[Tensor, Tensor]:
    if W.ndim != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ConfigError(
            f"expected W (rows, cols) and H (cols, cols), got W {tuple(W.shape)} and H "
            f"{tuple(H.shape)}; reshape conv weights to (out, in*kh*kw)"
        )
    dtype = torch.promote_types(W.dtype, torch.float32)
    return W.detach().to(dtype).clone(), H.detach().to(device=W.device, dtype=dtype)


class _Rule:
    """What a blocked OBS pass puts in column ``j``: 0 (pruning) or ``quant(w)`` (GPTQ)."""

    def start_block(self, W1: Tensor, d1: Tensor, i1: int) -> None:
        """Called with the block's current weights and ``diag(U)`` before its first column."""

    def column(self, W1: Tensor, d1: Tensor, i: int, j: int) -> Tensor:
        raise NotImplementedError


def _blocked_obs(W: Tensor, U: Tensor, rule: _Rule, block_size: int) -> Tensor:
    """The shared GPTQ/SparseGPT loop: fix column j to ``rule.column(...)``, spread the error.

    ``W`` (rows, cols) is overwritten; returns the fixed weights. With ``e = (w_j - q_j) /
    U_jj``, the columns to the right receive ``W[:, j:] -= e U[j, j:]``: inside the block
    immediately, outside it once per block (``W[:, i2:] -= E U[i1:i2, i2:]``).
    """
    if int(block_size) < 1:
        raise ConfigError(f"block_size must be a positive number of columns, got {block_size}")
    cols = W.shape[1]
    out = torch.zeros_like(W)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d1 = U1.diagonal()
        err1 = torch.zeros_like(W1)
        rule.start_block(W1, d1, i1)
        for i in range(i2 - i1):
            q = rule.column(W1, d1, i, i1 + i)
            e = (W1[:, i] - q) / d1[i]
            out[:, i1 + i] = q
            W1[:, i:] -= e.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            err1[:, i] = e
        W[:, i2:] -= err1 @ U[i1:i2, i2:]
    return out


class _QuantRule(_Rule):
    def __init__(self, quantize: Quantizer, keep: Tensor | None) -> None:
        self.quantize, self.keep = quantize, keep

    def column(self, W1, d1, i, j):
        q = self.quantize(W1[:, i].clone(), j).to(W1.dtype)
        if q.shape != W1[:, i].shape:
            raise ConfigError(
                f"quantize(column, j) must return a tensor of shape {tuple(W1[:, i].shape)}, "
                f"got {tuple(q.shape)}"
            )
        if self.keep is not None:
            q = q.masked_fill(~self.keep[:, j], 0.0)
        return q


def gptq(
    W: Tensor,
    H: Tensor,
    quantize: Quantizer,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    keep: Tensor | None = None,
) -> Tensor:
    """GPTQ: quantize ``W`` column by column, compensating each error with the rest (OBQ).

    ``W`` (rows, cols); ``H`` (cols, cols) ``= 2 X X^T / N`` of the layer inputs;
    ``quantize(col (rows,), j) -> (rows,)`` returns the quantized values of column ``j`` (set
    its scales from ``W`` beforehand). ``keep`` (rows, cols) bool: entries where it is False
    are forced to exactly 0 (pruned weights stay pruned). Returns ``W_q`` (rows, cols) in
    ``W``'s dtype. Frantar, Ashkboos, Hoefler & Alistarh 2023, "GPTQ".
    """
    work, H = _as_work(W, H)
    U, dead = damped_inverse_cholesky(H, damp)
    work[:, dead] = 0.0
    if keep is not None:
        keep = _check_keep(keep, W)
    return _blocked_obs(work, U, _QuantRule(quantize, keep), block_size).to(W.dtype)


def _check_keep(keep: Tensor, W: Tensor) -> Tensor:
    if keep.shape != W.shape:
        raise ConfigError(f"keep mask shape {tuple(keep.shape)} != weight shape {tuple(W.shape)}")
    return keep.to(device=W.device, dtype=torch.bool)


class _SparseRule(_Rule):
    """SparseGPT's adaptive mask: per block, prune the lowest ``w^2 / U_jj^2`` (or N:M groups)."""

    def __init__(self, rows: int, cols: int, sparsity: float | None, nm, keep) -> None:
        self.rows, self.cols, self.sparsity, self.nm, self.keep = rows, cols, sparsity, nm, keep
        self.pruned = torch.zeros(rows, cols, dtype=torch.bool, device=keep.device)
        self.done = 0  # entries pruned so far

    def _scores(self, W, d, j0, j1):
        s = W.pow(2) / d.pow(2).unsqueeze(0)
        return s.masked_fill(~self.keep[:, j0:j1], float("-inf"))

    def start_block(self, W1, d1, i1):
        if self.nm is not None:
            return
        i2 = i1 + W1.shape[1]
        s = self._scores(W1, d1, i1, i2).flatten()
        forced = int(torch.isneginf(s).sum())
        target = round(self.sparsity * self.rows * i2) - self.done
        k = min(max(target, forced), s.numel())
        idx = torch.argsort(s, stable=True)[:k]
        block = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
        block[idx] = True
        self.pruned[:, i1:i2] = block.view(self.rows, -1)
        self.done += k

    def column(self, W1, d1, i, j):
        if self.nm is not None and j % self.nm[1] == 0:
            n, m = self.nm
            s = self._scores(W1[:, i : i + m], d1[i : i + m], j, j + m)
            order = torch.argsort(s, dim=1, stable=True)
            cut = torch.zeros_like(s, dtype=torch.bool).scatter_(1, order[:, : m - n], True)
            self.pruned[:, j : j + m] = cut | torch.isneginf(s)
        return W1[:, i].masked_fill(self.pruned[:, j], 0.0)


def _check_target(cols: int, sparsity: float | None, nm: tuple[int, int] | None):
    if nm is not None:
        n, m = (int(v) for v in nm)
        if not 0 < n < m:
            raise ConfigError(f"N:M needs 0 < N < M, got {n}:{m}; e.g. nm=(2, 4)")
        if cols % m:
            raise ConfigError(
                f"N:M groups of {m} must tile the {cols} input columns; pick M dividing {cols}"
            )
        return None, (n, m)
    if sparsity is None:
        raise ConfigError("give a sparsity in (0, 1) or nm=(N, M)")
    return check_fraction("sparsity", sparsity), None


def sparsegpt(
    W: Tensor,
    H: Tensor,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    keep: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """SparseGPT: prune ``W`` to ``sparsity`` (or N:M) and reconstruct the layer output.

    ``W`` (rows, cols), ``H`` (cols, cols) ``= 2 X X^T / N``. Columns are visited in order;
    at the start of each 128-column block the lowest ``w^2 / U_jj^2`` entries of the block are
    chosen (N:M: per group of M consecutive columns and row), set to 0, and the error is
    propagated right. The total pruned count is exactly ``round(sparsity * rows * cols)``
    (unless ``keep`` already prunes more). ``keep`` (rows, cols): False = already pruned, stays
    0. Returns ``(W_new, keep_mask)``.
    """
    work, H = _as_work(W, H)
    rows, cols = work.shape
    sparsity, nm = _check_target(cols, sparsity, nm)
    if nm is not None:
        block_size = max(nm[1], block_size // nm[1] * nm[1])
    keep = (
        _check_keep(keep, W)
        if keep is not None
        else torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    )
    U, dead = damped_inverse_cholesky(H, damp)
    work[:, dead] = 0.0
    rule = _SparseRule(rows, cols, sparsity, nm, keep)
    new = _blocked_obs(work, U, rule, block_size)
    return new.to(W.dtype), ~rule.pruned


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
    work, H = _as_work(W, H)
    rows, cols = work.shape
    sparsity, nm = _check_target(cols, sparsity, nm)
    keep = _check_keep(keep, W) if keep is not None else torch.ones_like(work, dtype=torch.bool)
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
    work, H = _as_work(W, H)
    keep = _check_keep(keep, W)
    U, dead = damped_inverse_cholesky(H, damp)
    Hinv = U.T @ U
    rows, cols = work.shape
    batch = row_batch or max(1, int(2**24 // max(cols * cols, 1)))
    out = torch.empty_like(work)
    for r0 in range(0, rows, batch):
        sl = slice(r0, r0 + batch)
        out[sl] = obs_remove_set(work[sl], Hinv.expand(work[sl].shape[0], cols, cols), ~keep[sl])
    return out.to(W.dtype)
