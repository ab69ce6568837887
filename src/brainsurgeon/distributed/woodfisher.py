"""Merging a :class:`~brainsurgeon.curvature.inverse.WoodburyInverse` over the ranks.

Its statistics are ``sum_v ||v||^2``, the vector count and either the block Grams
``G^T G`` (strategy ``direct``: they add) or the vectors themselves (``woodbury``: they are
concatenated in rank order, which with contiguous shards is the one-process sample order,
so the inverse is the one-process inverse). Ranks that resolved ``auto`` differently (the
GGN's per-sample vector count is estimated from each rank's first batch) all fall back to
summed Grams; a rank that saw nothing contributes zeros.
"""

from __future__ import annotations

from typing import Any

import torch

from . import group

_CODES = {"auto": 0, "woodbury": 1, "direct": 2}


def _local_gram(inv: Any) -> torch.Tensor:
    """``G^T G`` (blocks, B, B) of whatever this rank holds (zeros for nothing)."""
    B, blocks = inv.layout.block, inv.layout.blocks
    if inv._gram is not None:
        return inv._gram
    if inv._vectors:
        G = torch.cat(inv._vectors, dim=1)
        return G.transpose(1, 2) @ G
    dtype = torch.float32 if inv._dtype_hint is None else inv._dtype_hint
    return torch.zeros(blocks, B, B, dtype=dtype, device=inv.device)


def _dtype_hint(inv: Any) -> torch.dtype | None:
    if inv._gram is not None:
        return inv._gram.dtype
    if inv._vectors:
        return inv._vectors[0].dtype
    return None


def reduce_woodbury(inv: Any, dst: int | None = None) -> None:
    """Merge ``inv``'s statistics over every rank in place. Summed Grams go, chunk by
    chunk, to the rank that inverts that chunk (``WoodburyInverse`` works on its own chunks
    and broadcasts only diagonals and updated weights), or all to ``dst``; gathered vectors
    go to every rank."""
    code = 0 if inv.count_ == 0 else _CODES[inv.strategy]
    codes = [int(c) for c in group.gather_varlen(torch.tensor([code]), what="strategies")]
    hints = group.gather_varlen(
        torch.tensor([-1 if _dtype_hint(inv) is None else _DTYPES.index(_dtype_hint(inv))]),
        what="dtypes",
    )
    known = [int(h) for h in hints if int(h) >= 0]
    inv._dtype_hint = _DTYPES[max(known)] if known else None
    inv._sumsq = float(group.sum_(torch.tensor(inv._sumsq, dtype=torch.float64), "sumsq"))
    inv.count_ = int(group.sum_(torch.tensor(inv.count_, dtype=torch.long), "count"))
    inv._hinv = None
    if not any(codes):
        return
    if 2 in codes:
        gram = _local_gram(inv).to(inv._dtype_hint)
        if dst is None:  # each chunk of blocks to the rank that will invert it, and only there
            from .shard import batch_ranks

            chunks = inv.layout.chunks()
            for sl, r in zip(chunks, batch_ranks(len(chunks), group.world_size()), strict=True):
                gram[sl] = group.sum_(gram[sl], "WoodFisher Gram blocks", dst=r)
            inv._gram = gram
        else:
            inv._gram = group.sum_(gram, "WoodFisher Gram blocks", dst)
        inv._vectors, inv.strategy = [], "direct"
        return
    B, blocks = inv.layout.block, inv.layout.blocks
    mine = (
        torch.cat(inv._vectors, dim=1).to(inv._dtype_hint)
        if inv._vectors
        else torch.zeros(blocks, 0, B, dtype=inv._dtype_hint, device=inv.device)
    )
    parts = group.gather_varlen(mine, dim=1, what="WoodFisher vectors")
    inv._vectors, inv.strategy = [torch.cat(parts, dim=1)], "woodbury"


_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
