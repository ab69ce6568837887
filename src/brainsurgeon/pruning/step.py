"""One pruning step: statistics -> criterion scores -> selector chooses -> criterion
compensates -> masks; or, for a :class:`~.criteria.Solver` (layer-wise OBS), its solve.

The criterion's statistics are collected once and passed to ``score`` and ``compensate``;
the selector comes from the ``SELECTORS`` registry by the config's scheme name; the engine
writes the new weights and installs the masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.core import Dataset
from ..losses import LossFn
from ..models.adapters import Targets
from ..state import original
from .config import PruneConfig
from .criteria import CompensatingCriterion, Criterion, SaliencyContext, Solver
from .masks import find_mask, set_mask
from .selection import SELECTORS, Request, total_sparsity


def current_masks(targets: dict[str, tuple[torch.nn.Module, str]]) -> dict[str, torch.Tensor]:
    """Keep-masks of already masked targets (targets without a mask are absent)."""
    out = {}
    for name, (module, tensor_name) in targets.items():
        mask = find_mask(module, tensor_name)
        if mask is not None:
            out[name] = mask.mask.clone()
    return out


def make_context(
    model: nn.Module,
    targets: Targets,
    data: Dataset | None,
    *,
    loss_fn: LossFn,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: bool,
) -> SaliencyContext:
    """The :class:`SaliencyContext` of ``targets`` with their current masks."""
    return SaliencyContext(
        model=model,
        targets=targets,
        data=data,
        loss_fn=loss_fn,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        masks=current_masks(targets),
    )


def select(
    config: PruneConfig,
    scores: dict[str, torch.Tensor],
    amount: float,
    masks: dict[str, torch.Tensor],
    *,
    layer_amounts: dict[str, float] | None = None,
    sigma: dict[str, float] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The configured scheme's selector (from ``SELECTORS``); returns ``(keep, info)``."""
    request = Request(
        amount=amount,
        masks=masks,
        layer_sparsity=layer_amounts,
        threshold=config.threshold,
        nm=tuple(config.nm),
        lam=config.lam,
        sigma=sigma,
    )
    return SELECTORS.get(config.scheme)(scores, request)


def class_spread(criterion: Criterion, ctx: SaliencyContext) -> dict[str, float] | None:
    """The per-tensor spread the class-distribution selector divides by (None: the scores')."""
    if criterion.class_spread != "weights":
        return None
    return {n: float(ctx.tensor(n).detach().float().std()) for n in ctx.targets}


def prune_step(
    model: torch.nn.Module,
    criterion: Criterion,
    config: PruneConfig,
    targets: dict[str, tuple[torch.nn.Module, str]],
    *,
    amount: float,
    layer_amounts: dict[str, float] | None,
    data: Dataset | None,
    seed: int,
    device: torch.device,
    progress: bool,
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, Any]:
    """Score, select, compensate and mask once; returns a record of what happened."""
    ctx = make_context(
        model,
        targets,
        data,
        loss_fn=loss_fn,
        batch_size=config.batch_size,
        seed=seed,
        device=device,
        progress=progress,
    )
    masks = ctx.masks
    info: dict[str, Any] = {}
    predicted = None
    if isinstance(criterion, Solver):
        nm = tuple(config.nm) if config.scheme == "nm" else None
        keep, new = criterion.solve(ctx, layer_amounts or amount, nm)
        _write(ctx, new)
    else:
        stats = criterion.statistics(ctx)
        scores = criterion.score(ctx, stats)
        spread = class_spread(criterion, ctx)
        keep, info = select(
            config, scores, amount, masks, layer_amounts=layer_amounts, sigma=spread
        )
        predicted = _predicted(criterion, scores, keep, masks)
        if isinstance(criterion, CompensatingCriterion):
            _write(ctx, criterion.compensate(ctx, keep, stats=stats))
    for name, (module, tensor_name) in targets.items():
        set_mask(module, tensor_name, keep[name])
    return {"sparsity": total_sparsity(keep), "predicted_damage": predicted, **info}


def _write(ctx: SaliencyContext, new: dict[str, torch.Tensor] | None) -> None:
    """Copy new values of target tensors into the trainable originals."""
    if not new:
        return
    with torch.no_grad():
        for name, value in new.items():
            module, tensor_name = ctx.targets[name]
            original(module, tensor_name).copy_(value.to(original(module, tensor_name)))


def _predicted(criterion: Criterion, scores, keep, masks) -> float | None:
    """Sum of the scores of the entries pruned in this step (loss-scale criteria only)."""
    if not criterion.loss_scale:
        return None
    total = 0.0
    for name, s in scores.items():
        newly = ~keep[name].to(s.device)
        if name in masks:
            newly &= masks[name].to(s.device)
        chosen = s[newly].double()
        total += float(chosen[torch.isfinite(chosen)].sum())
    return total if math.isfinite(total) else None
