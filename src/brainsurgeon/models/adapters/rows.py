"""Which rows of a layer's input are real data: the token mask of a padded text batch.

A padded batch of sentences runs every layer on the padding positions too. Their outputs
never reach the result (attention masks them as keys, mean pooling skips them), so the
layer-wise solvers must not fit them: ``H = 2 X X^T / N`` over every position of a batch of
short sentences padded to the longest is mostly padding. A model adapter that knows the
mask (the Hugging Face one) runs its backbone inside :func:`valid_rows`; the statistics
hooks (:mod:`brainsurgeon.curvature.layer_inputs`) then keep, of an input ``(N, L, F)``
whose leading shape matches the mask ``(N, L)``, the rows where it is true.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

_ROWS: ContextVar[Tensor | None] = ContextVar("brainsurgeon_valid_rows", default=None)


@contextmanager
def valid_rows(mask: Tensor | None) -> Iterator[None]:
    """Within the block, ``mask`` (N, L) bool marks the real positions (None: all)."""
    token = _ROWS.set(None if mask is None else mask.bool())
    try:
        yield
    finally:
        _ROWS.reset(token)


def current_rows() -> Tensor | None:
    """The mask set by the innermost :func:`valid_rows`, or None."""
    return _ROWS.get()


def real_rows(x: Tensor) -> Tensor:
    """``x`` (..., F) as rows (R, F): only the real positions when a mask of ``x``'s leading
    shape is set, else every row."""
    mask = _ROWS.get()
    if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
        return x[mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])


def real_positions(x: Tensor, dim: int) -> tuple[Tensor, int]:
    """``x`` with features on ``dim``: of an input ``(N, L, F)`` (``dim`` the last) under a
    matching mask, the real positions ``(R, F)`` and its feature dim; else ``x, dim``."""
    mask = _ROWS.get()
    last = dim % x.dim() == x.dim() - 1
    if mask is not None and last and x.dim() > 2 and tuple(x.shape[:-1]) == tuple(mask.shape):
        return x[mask.to(x.device)], 1
    return x, dim
