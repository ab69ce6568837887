"""Layer-wise solvers over the ranks: each layer solved once, by its owner, then broadcast.

The layers are assigned by cost, largest first, each to the least-loaded rank (LPT): a
SparseGPT / GPTQ / layer-OBS solve of a ``(rows, cols)`` weight costs about ``cols^3 +
rows cols^2`` (the Cholesky of ``H`` and the row updates), exact OBC ``rows cols^3``. The
layer's input statistics are reduced to its owner only; after the solve the owner
broadcasts the new weights and the keep-mask, so every rank ends with the same model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import group


def solve_cost(rows: int, cols: int, exact: bool = False) -> float:
    """Flops of one layer's solve, up to a constant: ``rows cols^3`` (OBC) or ``cols^3 +
    rows cols^2`` (SparseGPT, GPTQ, ``layer_obs_update``)."""
    rows, cols = float(rows), float(cols)
    return rows * cols**3 if exact else cols**3 + rows * cols**2


def assign(costs: dict[str, float], world: int | None = None) -> dict[str, int]:
    """``{layer: rank}``: largest cost first to the least-loaded rank (ties: lower rank,
    then the earlier layer), so the busiest rank holds at most ``4/3`` of the optimum."""
    world = group.world_size() if world is None else int(world)
    load = [0.0] * world
    order = sorted(costs, key=lambda n: (-costs[n], list(costs).index(n)))
    owners = {}
    for name in order:
        r = min(range(world), key=lambda i: (load[i], i))
        owners[name] = r
        load[r] += costs[name]
    return {n: owners[n] for n in costs}


def share(tensors: dict[str, Tensor], owners: dict[str, int], what: str) -> None:
    """Broadcast each ``tensors[name]`` from ``owners[name]`` in place (order: the dict's)."""
    if not group.active():
        return
    for name, t in tensors.items():
        if name not in owners:
            continue
        if t.dtype == torch.bool:
            buf = t.to(torch.uint8)
            group.broadcast_(buf, owners[name], f"{what} of {name}")
            t.copy_(buf.bool())
        else:
            group.broadcast_(t, owners[name], f"{what} of {name}")


def mine(owners: dict[str, int], name: str) -> bool:
    """True when this rank solves ``name`` (always alone, or when ``name`` has no owner)."""
    return not group.active() or owners.get(name, group.rank()) == group.rank()


def by_owner(out: Tensor, slices: list[slice], compute, what: str, share: bool = True) -> Tensor:
    """``out[sl] = compute(sl)`` for every slice, each slice on one rank, then broadcast
    (``share=False``: not; every rank keeps only its own slices).

    Slices go to ranks in contiguous runs (as batches do); alone, a plain loop. Used for
    the WoodFisher block inverses (kept where they were computed), their diagonals and
    their OBS updates (broadcast): each block is computed once, by the same code as in one
    process, so the result is bit-identical to it.
    """
    from .shard import batch_ranks

    owners = batch_ranks(len(slices), group.world_size())
    for sl, r in zip(slices, owners, strict=True):
        if r == group.rank():
            out[sl] = compute(sl)
    if share and group.active():
        for sl, r in zip(slices, owners, strict=True):
            group.broadcast_(out[sl], r, what)
    return out
