"""Scale out with ``torch.distributed``: the only package that talks to it.

* :mod:`.group`: rank, world size, :func:`init_from_env` (``torchrun``'s variables; gloo on
  CPU, nccl on CUDA), deterministic collectives that fail with :class:`DistributedError`;
* :mod:`.reduce`: ``reduce(acc)`` merges an accumulator's unnormalised sums and counts
  over the ranks exactly (Welford by Chan's formula), a registry keyed by type;
* :mod:`.shard`: the calibration set cut batch by batch by rank, and the sharded ``collect``;
* :mod:`.layers`: layer-wise solvers spread over the ranks by cost, results broadcast;
* :mod:`.training`: data-parallel gradient steps equal to one process's global batch.

Alone (no process group, or one process) every function here is a no-op.
"""

from __future__ import annotations

from .group import (
    DistributedError,
    active,
    barrier,
    broadcast_,
    check_same,
    describe,
    init_from_env,
    is_main,
    rank,
    shutdown,
    sum_,
    world_size,
)
from .reduce import REDUCERS, reduce, register_reducer
from .shard import batch_ranks, collect, my_batches, shard

__all__ = [
    "REDUCERS",
    "DistributedError",
    "active",
    "barrier",
    "batch_ranks",
    "broadcast_",
    "check_same",
    "collect",
    "describe",
    "init_from_env",
    "is_main",
    "my_batches",
    "rank",
    "reduce",
    "register_reducer",
    "shard",
    "shutdown",
    "sum_",
    "world_size",
]
