"""Sharding the calibration data by rank, batch by batch, and the sharded ``collect``.

The data set is cut into the batches one process would see (``batch_size`` rows in order,
the last one short); rank ``r`` of ``W`` takes a contiguous run of them (``contiguous``,
the default: batches ``[r B / W, (r+1) B / W)``) or every ``W``-th (``strided``). Uneven
splits are fine (a rank may get one batch fewer, or none). Every batch is then exactly a
batch of the one-process run, so per-batch work (chunked per-sample passes, a seeded
Hutchinson probe per batch) is the same and only the order of the final sums differs.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.core import Dataset
from ..errors import BrainsurgeonError, ConfigError
from ..utils import preserved_modes
from . import group
from .reduce import reduce

MODES = ("contiguous", "strided")


def batch_ranks(n_batches: int, world: int, mode: str = "contiguous") -> list[int]:
    """The rank that processes each of ``n_batches`` batches."""
    if mode not in MODES:
        raise ConfigError(f"sharding must be one of {list(MODES)}, got {mode!r}")
    if mode == "strided":
        return [b % world for b in range(n_batches)]
    return [min(world - 1, (b * world) // max(n_batches, 1)) for b in range(n_batches)]


def my_batches(n: int, batch_size: int, mode: str = "contiguous") -> list[int]:
    """Indices of this rank's batches among the ``ceil(n / batch_size)`` of the data."""
    n_batches = -(-n // batch_size)
    me, world = group.rank(), group.world_size()
    return [b for b, r in enumerate(batch_ranks(n_batches, world, mode)) if r == me]


def shard(data: Dataset, batch_size: int, mode: str = "contiguous") -> Dataset:
    """This rank's samples (its batches, in order) as a :class:`Dataset` (alone: ``data``)."""
    if not group.active():
        return data
    group.check_same("the calibration data", len(data), batch_size)
    idx = [
        i
        for b in my_batches(len(data), batch_size, mode)
        for i in range(b * batch_size, min((b + 1) * batch_size, len(data)))
    ]
    index = torch.tensor(idx, dtype=torch.long)
    return Dataset(data.x[index], data.y[index])


def collect(
    accumulator: Any,
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 256,
    device=None,
    progress: bool = False,
    desc: str = "statistics",
    dst: int | None = None,
    mode: str = "contiguous",
    reduce_result: bool = True,
) -> Any:
    """:func:`brainsurgeon.curvature.collect` over this rank's batches, then :func:`reduce`.

    Alone, exactly ``curvature.collect``. Under ``torch.distributed`` every rank must pass
    the same data (checked: length and batch size) and ends with the global statistics
    (``dst``: only rank ``dst`` does). Accumulators with a ``seek(batch_index)`` method are
    told each batch's global index first (Hutchinson's seeded probes). ``reduce_result``
    False: leave the reduction to the caller (forward hooks feed other accumulators).
    """
    if not group.active():
        from ..curvature import collect as plain

        return plain(
            accumulator, model, data, batch_size=batch_size, device=device,
            progress=progress, desc=desc,
        )  # fmt: skip
    group.check_same(f"the calibration data of {desc}", len(data), batch_size)
    mine = my_batches(len(data), batch_size, mode)
    n_batches = -(-len(data) // batch_size)
    show = progress and group.is_main() and sys.stderr.isatty()
    bar = tqdm(total=len(mine), desc=desc, leave=False, unit="batch", disable=not show)
    seek = getattr(accumulator, "seek", None)
    with preserved_modes(model, "eval"):
        try:
            for b in mine:
                x = data.x[b * batch_size : (b + 1) * batch_size]
                y = data.y[b * batch_size : (b + 1) * batch_size]
                if device is not None:
                    x, y = x.to(device), y.to(device)
                if seek is not None:
                    seek(b)
                try:
                    accumulator.update(x, y)
                except BrainsurgeonError as err:
                    raise type(err)(f"{err} (batch {b + 1} of {n_batches} of {desc})") from None
                bar.update(1)
        finally:
            bar.close()
    return reduce(accumulator, dst) if reduce_result else accumulator
