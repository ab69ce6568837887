"""Glue between criteria and accumulators: feed a :class:`SaliencyContext`'s data, tidy scores."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def gather(accumulator: Any, ctx: Any, criterion: str) -> Any:
    """Run ``ctx.data`` through ``accumulator`` (eval mode, ``ctx.batch_size``, ``ctx.device``).

    Under ``torch.distributed`` each rank takes its share of the batches and the statistics
    are then reduced over the ranks (:func:`brainsurgeon.distributed.collect`).
    """
    from ..distributed import collect

    data = ctx.require_data(criterion)
    return collect(
        accumulator,
        ctx.model,
        data,
        batch_size=ctx.batch_size,
        device=ctx.device,
        progress=ctx.progress,
        desc=criterion,
    )


def finish(scores: dict[str, Tensor], ctx: Any) -> dict[str, Tensor]:
    """Detached scores in each tensor's dtype and device; already pruned entries score 0."""
    out = {}
    for name, s in scores.items():
        ref = ctx.tensor(name)
        dtype = ref.dtype if ref.dtype.is_floating_point else torch.float32
        s = s.detach().to(device=ref.device, dtype=dtype).reshape(ref.shape)
        mask = ctx.masks.get(name)
        if mask is not None:
            s = s.masked_fill(~mask.to(device=s.device, dtype=torch.bool), 0.0)
        out[name] = s.clone()
    return out


def weights(ctx: Any) -> dict[str, Tensor]:
    """The effective (masked) target tensors, detached."""
    return {name: ctx.tensor(name).detach() for name in ctx.targets}
