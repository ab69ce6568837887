"""One pruning step: criterion scores -> selector chooses -> criterion compensates -> masks.

Criteria whose selection is part of the solve (layer-wise OBS) implement
``prune(ctx, sparsity, nm) -> (keep, new_weights)`` (sparsity: one fraction for every layer,
or one per tensor); the engine writes the weights and installs the masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..data.core import Dataset
from ..losses import LossFn
from ..state import original
from .config import PruneConfig
from .criteria import Criterion, SaliencyContext
from .masks import find_mask, set_mask
from .selection import (
    select_class_distribution,
    select_global,
    select_nm,
    select_per_layer,
    select_threshold,
    total_sparsity,
)


def current_masks(targets: dict[str, tuple[torch.nn.Module, str]]) -> dict[str, torch.Tensor]:
    """Keep-masks of already masked targets (targets without a mask are absent)."""
    out = {}
    for name, (module, tensor_name) in targets.items():
        mask = find_mask(module, tensor_name)
        if mask is not None:
            out[name] = mask.mask.clone()
    return out


def select(
    config: PruneConfig,
    scores: dict[str, torch.Tensor],
    amount: float,
    masks: dict[str, torch.Tensor],
    *,
    layer_amounts: dict[str, float] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Dispatch to the configured scheme; returns ``(keep, info)``."""
    scheme = config.scheme
    if scheme == "global":
        return select_global(scores, amount, masks=masks), {}
    if scheme == "per-layer":
        return select_per_layer(scores, amount, masks=masks, layer_sparsity=layer_amounts), {}
    if scheme == "class-distribution":
        sigma = None
        if config.criterion == "magnitude" and weights is not None:  # See et al.: std of weights
            sigma = {n: float(w.float().std()) for n, w in weights.items()}
        keep, lam = select_class_distribution(
            scores, amount, masks=masks, sigma=sigma, lam=config.lam
        )
        return keep, {"lam": lam}
    if scheme == "threshold":
        return select_threshold(scores, config.threshold, masks=masks), {}
    n, m = config.nm
    return select_nm(scores, n, m, masks=masks), {}


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
    masks = current_masks(targets)
    ctx = SaliencyContext(
        model=model,
        targets=targets,
        data=data,
        loss_fn=loss_fn,
        batch_size=config.batch_size,
        seed=seed,
        device=device,
        progress=progress,
        masks=masks,
    )
    if solves_selection(criterion):
        nm = tuple(config.nm) if config.scheme == "nm" else None
        solved = criterion.prune(ctx, layer_amounts or amount, nm)
        keep, new = solved if isinstance(solved, tuple) else (solved, None)
        _write(ctx, new)
        info: dict[str, Any] = {}
        predicted = None
    else:
        scores = criterion.scores(ctx)
        weights = {n: ctx.tensor(n).detach() for n in targets}
        keep, info = select(
            config, scores, amount, masks, layer_amounts=layer_amounts, weights=weights
        )
        predicted = _predicted(criterion, scores, keep, masks)
        _compensate(criterion, ctx, keep)
    for name, (module, tensor_name) in targets.items():
        set_mask(module, tensor_name, keep[name])
    return {"sparsity": total_sparsity(keep), "predicted_damage": predicted, **info}


def solves_selection(criterion: Criterion) -> bool:
    """True for criteria that choose the pruned set inside their solve (layer-wise OBS)."""
    return callable(getattr(criterion, "prune", None))


def _compensate(criterion: Criterion, ctx: SaliencyContext, keep) -> None:
    _write(ctx, criterion.compensate(ctx, keep))


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
