"""Data-parallel gradient steps that equal one process's step on the same global batch.

Every rank draws the same shuffled global batch (same seed) and keeps its contiguous slice
of rows (:func:`local_rows`; uneven when the batch does not divide). Its objective is
``(n_r / n) * mean_r(loss) + penalty / W``, so the *sum* of the ranks' gradients is the
gradient of the global-batch mean plus the penalty exactly, whatever the split; the sum is
taken by :func:`sync_grads` (reduce + broadcast: bit-identical on every rank, like DDP's
all-reduce but never averaging over unequal shards). The optimizer then takes the same step
everywhere, and masks and quantizers, being parametrizations of the same weights, act the
same way on every rank: pruned weights stay exactly zero on all of them.

Not equal to one process: BatchNorm in training mode (batch statistics per slice) and
dropout (each rank its own random masks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import group


def local_rows(n: int) -> slice:
    """This rank's contiguous rows of an ``n``-row global batch."""
    r, w = group.rank(), group.world_size()
    return slice(r * n // w, (r + 1) * n // w)


def sync_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (no-op alone)."""
    if not group.active():
        return
    for name, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, Tensor) and t.numel():
            with torch.no_grad():
                group.broadcast_(t.data, 0, f"the start weights ({name})")


def sync_grads(params: list[nn.Parameter], value: Tensor) -> float:
    """Sum the gradients of ``params`` and the scalar ``value`` over the ranks, in place.

    One coalesced collective; a parameter that has no gradient on any rank keeps ``None``.
    Returns the summed ``value`` (the global batch loss).
    """
    if not group.active():
        return float(value)
    have = torch.tensor([p.grad is not None for p in params], dtype=torch.float64)
    flat = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).double()
        for p in params
    ]
    buf = torch.cat([value.detach().reshape(1).double().cpu(), have, *[f.cpu() for f in flat]])
    buf = group.sum_(buf, "the gradient sum")
    total, flags, start = float(buf[0]), buf[1 : 1 + len(params)], 1 + len(params)
    for p, flag in zip(params, flags, strict=True):
        size = p.numel()
        if float(flag) > 0:
            p.grad = buf[start : start + size].view_as(p).to(device=p.device, dtype=p.dtype)
        start += size
    return total
