"""Measured loss changes: the batched forward passes behind ``true-damage``,
``dropout-regression`` and ``saliency-check``.

Many modified copies of one model are evaluated at once with ``torch.func.vmap`` over
``functional_call`` on a plain (parametrization-free) copy, chunked so a chunk's weights take
at most ``budget`` numbers. Loss differences are accumulated in float64.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..errors import NumericalError

if TYPE_CHECKING:  # criteria import this module; avoid the cycle at run time
    from .criteria.base import SaliencyContext

BUDGET = 2**24  # numbers per chunk of stacked weight variants (64 MiB in float32)


def plain_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode whose parametrized tensors are plain parameters
    holding the effective values (``W * M``), optionally cast to ``dtype``. ``model`` is
    untouched."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if not parametrize.is_parametrized(module):
            continue
        effective = {n: getattr(module, n).detach().clone() for n in module.parametrizations}
        del module._modules["parametrizations"]
        module.__class__ = module.__class__.__bases__[0]
        for name, value in effective.items():
            module.register_parameter(name, nn.Parameter(value))
    if dtype is not None:
        copied.to(dtype)
    copied.eval()
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def calibration_batches(
    ctx: SaliencyContext, dtype: torch.dtype
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = ctx.require_data("measured damage")
    batches = data.batches(ctx.batch_size, device=ctx.device)
    return [(x.to(dtype) if x.is_floating_point() else x, y) for x, y in batches]


def mean_loss(model: nn.Module, batches, loss_fn) -> float:
    """Mean loss over ``batches`` (float64 accumulation); NaN/inf is refused."""
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            total += float(loss_fn(model(x), y)) * len(y)
            n += len(y)
    loss = total / max(n, 1)
    if not math.isfinite(loss):
        raise NumericalError(
            f"the loss on the calibration data is {loss}; the model or the data "
            "is broken (check the normalisation and the weights)"
        )
    return loss


def variant_losses(
    model: nn.Module,
    variants: Mapping[str, torch.Tensor],
    batches,
    loss_fn,
) -> torch.Tensor:
    """Mean loss of ``model`` with tensors replaced by each of ``B`` variants at once.

    ``variants``: ``{name: (B, *shape)}``; returns a float64 vector (B,).
    """
    stacked = dict(variants)
    count = next(iter(stacked.values())).shape[0]

    def loss_of(tensors, x, y):
        return loss_fn(functional_call(model, tensors, (x,)), y)

    batched = vmap(loss_of, in_dims=(0, None, None))

    def looped(tensors, x, y):  # layers without a vmap rule (LSTM/GRU): one variant at a time
        return torch.stack(
            [loss_of({k: v[b] for k, v in tensors.items()}, x, y) for b in range(count)]
        )

    total = torch.zeros(count, dtype=torch.float64, device=next(iter(stacked.values())).device)
    n = 0
    with torch.no_grad():
        for x, y in batches:
            try:
                losses = batched(stacked, x, y)
            except RuntimeError as err:
                if "atching rule" not in str(err):
                    raise
                batched = looped
                losses = batched(stacked, x, y)
            total += losses.to(torch.float64) * len(y)
            n += len(y)
    return total / max(n, 1)


def chunk_size(numel: int, budget: int = BUDGET, cap: int = 256) -> int:
    return max(1, min(cap, budget // max(numel, 1)))


def measure_damage(
    ctx: SaliencyContext,
    indices: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float64,
    desc: str = "true damage",
) -> dict[str, torch.Tensor]:
    """``L(w with w_q = 0) - L(w)`` for each flat index ``q`` in ``indices[name]``.

    Measured on ``ctx.data`` with ``ctx.loss_fn``; returns float64 vectors aligned with the
    indices. Cost: one forward pass over the data per index (batched ``chunk_size`` at a time).
    """
    model = plain_copy(ctx.model, dtype).to(ctx.device)
    batches = calibration_batches(ctx, dtype)
    base = mean_loss(model, batches, ctx.loss_fn)
    total = sum(int(idx.numel()) for idx in indices.values())
    bar = tqdm(total=total, desc=desc, disable=not ctx.progress, leave=False, unit="w")
    out = {}
    for name, idx in indices.items():
        weight = model.get_parameter(name).detach()
        losses = []
        for chunk in _chunks(idx.to(weight.device), chunk_size(weight.numel())):
            variants = weight.reshape(1, -1).repeat(len(chunk), 1)
            variants[torch.arange(len(chunk), device=weight.device), chunk] = 0.0
            variants = variants.view(len(chunk), *weight.shape)
            losses.append(variant_losses(model, {name: variants}, batches, ctx.loss_fn))
            bar.update(len(chunk))
        damage = torch.cat(losses) - base if losses else torch.zeros(0, dtype=torch.float64)
        if not torch.isfinite(damage).all():
            raise NumericalError(f"zeroing a weight of {name} made the loss NaN or infinite")
        out[name] = damage.cpu()
    bar.close()
    return out


def _chunks(idx: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, idx.numel(), size):
        yield idx[start : start + size]


def sample_entries(
    ctx: SaliencyContext, count: int | None, *, seed: int
) -> dict[str, torch.Tensor]:
    """Flat indices of ``count`` entries drawn uniformly (without replacement, seeded) from
    the unpruned entries of all targets, or every unpruned entry when ``count`` is None.
    Returned sorted per tensor, tensors in target order."""
    alive = {}
    for name in ctx.targets:
        mask = ctx.masks.get(name)
        numel = ctx.tensor(name).numel()
        flat = torch.arange(numel) if mask is None else torch.nonzero(mask.reshape(-1).cpu())[:, 0]
        alive[name] = flat
    total = sum(v.numel() for v in alive.values())
    if count is None or count >= total:
        return alive
    g = torch.Generator().manual_seed(seed)
    chosen = torch.sort(torch.randperm(total, generator=g)[:count]).values
    out, start = {}, 0
    for name, flat in alive.items():
        local = chosen[(chosen >= start) & (chosen < start + flat.numel())] - start
        out[name] = flat[local]
        start += flat.numel()
    return out
