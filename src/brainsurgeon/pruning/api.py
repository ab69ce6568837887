"""The pruning verbs: ``saliency`` (scores only) and ``prune`` (score, select, mask, fine-tune,
repeat). Both are pure: model in, model out, a result back; no files.

Round checkpoints, ``resume`` and run directories are the pipeline's
(:func:`brainsurgeon.pipeline.prune_run`), which drives the same rounds through
:func:`plan_prune` (validate everything, touch nothing) and :func:`prune_rounds` (one record
per finished round).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import memory, state
from ..data.core import DataLike, Dataset, as_dataset
from ..errors import ConfigError
from ..losses import LossFn, LossLike, resolve_loss
from ..models.adapters import Targets, compressible, left_dense
from ..training.evaluation import task_loss
from ..utils import preserved_modes, require_finite, resolve_device
from .config import PruneConfig
from .criteria import CRITERIA, Criterion, make_criterion
from .iterative import tune_and_measure, unchanged_on_error
from .layer_plan import interpolate, tensor_layer_plan, unit_layer_plan
from .schedules import plan
from .selection import sparsity, total_sparsity
from .step import current_masks, make_context, prune_step


@dataclass
class PruneResult:
    """What :func:`prune` did: final sparsity per tensor and overall, the summed predicted
    damage (loss-scale criteria; None otherwise) and one record per round (target and
    reached sparsity, accuracy before and after fine-tuning where data was given).
    ``model_sparsity``: the pruned fraction of *every* parameter of the model, and
    ``left_dense``: each parameter that was not a target, with the reason.
    ``out_dir``: the run directory, when the pipeline saved one."""

    sparsity: dict[str, float]
    total_sparsity: float
    predicted_damage: float | None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    config: PruneConfig = field(default_factory=PruneConfig)
    out_dir: Path | None = None
    model_sparsity: float | None = None
    left_dense: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "total_sparsity": self.total_sparsity,
            "predicted_damage": self.predicted_damage,
            "rounds": self.rounds,
            "config": self.config.to_dict(),
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "model_sparsity": self.model_sparsity,
            "left_dense": self.left_dense,
        }


@dataclass(frozen=True)
class PrunePlan:
    """A validated prune: the criterion, the tensors, every round's target sparsity (and the
    per-tensor targets of ``layer_sparsity``), the loss. Built by :func:`plan_prune`."""

    config: PruneConfig
    criterion: Criterion
    targets: Targets
    sparsities: list[float]
    layer_plan: list[dict[str, float]] | None
    loss: LossLike
    loss_fn: LossFn
    parameters: int = 0
    left_dense: dict[str, str] = field(default_factory=dict)
    groups: list | None = None  # structured pruning: the unit groups (criterion scores units)


def saliency(
    model: nn.Module,
    criterion: str,
    data: DataLike | None = None,
    *,
    samples: int = 1000,
    seed: int = 0,
    loss: LossLike = None,
    device: str | torch.device = "auto",
    include_bias: bool = False,
    layers: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
    batch_size: int = 256,
    progress: bool = False,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Predicted damage of removing each entry: ``{"fc1.weight": scores (same shape)}``.

    ``data``: samples for the statistics (the train split of a bundle), limited to ``samples``
    (seeded subset); ``loss``: a registered name or ``(output, target) -> scalar``;
    ``layers`` / ``exclude``: glob patterns on layer or tensor names; ``options`` go to the
    criterion (e.g. ``hessian="ggn"``). Low = safe to prune. The model is scored in eval mode
    and left unchanged.
    """
    crit = make_criterion(criterion, **options)
    calib = _calibration(data, samples, seed, criterion, crit.needs_data)
    loss_fn = resolve_loss(task_loss(loss, calib))
    targets = compressible(model, include_bias=include_bias, layers=layers, exclude=exclude)
    device = resolve_device(device)
    model.to(device)
    ctx = make_context(
        model,
        targets,
        calib,
        loss_fn=loss_fn,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
    )
    with preserved_modes(model, "eval"):
        scores = crit.scores(ctx)
    return {n: s.detach().cpu() for n, s in scores.items()}


def prune(
    model: nn.Module,
    config: PruneConfig | None = None,
    data: DataLike | None = None,
    *,
    loss: LossLike = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> PruneResult:
    """Prune ``model`` in place following ``config``; returns a :class:`PruneResult`.

    Per round: criterion scores -> selection (the round's target sparsity, exactly) ->
    criterion compensation (OBS) -> masks; then fine-tuning when ``finetune_epochs > 0``.
    ``loss``: the loss the criterion measures and fine-tuning minimises (a registered name
    or ``(output, target) -> scalar``; default cross entropy). ``callback(record)`` runs
    after each round. Every option is validated before the first weight changes, and a prune
    that raises (a bad option, a numerical failure, Ctrl-C) leaves the model as it was. To
    save rounds and resume, use :func:`brainsurgeon.pipeline.prune_run`.
    """
    prepared = plan_prune(model, config, data, loss=loss)
    device = resolve_device(device)
    model.to(device)
    records: list[dict[str, Any]] = []
    with unchanged_on_error(model, prepared.targets):
        for record in prune_rounds(model, prepared, data, device=device, progress=progress):
            records.append(record)
            if callback is not None:
                callback(record)
    return result_of(prepared, records)


def plan_prune(
    model: nn.Module,
    config: PruneConfig | None = None,
    data: DataLike | None = None,
    *,
    loss: LossLike = None,
) -> PrunePlan:
    """Validate ``config`` against ``model`` and ``data`` and plan the rounds; no side effects."""
    config = config or PruneConfig()
    if config.granularity != "element":
        return _plan_units(model, config, data, loss)
    crit = make_criterion(config.criterion, **config.criterion_options)
    if config.needs_data and data is None:
        tunes = config.finetune_epochs or config.final_finetune_epochs
        why = "fine-tuning" if tunes else f"criterion {config.criterion!r}"
        raise ConfigError(f"{why} needs data; pass data=... (CLI: the run's own data is used)")
    if data is not None:  # validates the type before any work; float targets: mse by default
        loss = task_loss(loss, as_dataset(data, "train"))
    targets = compressible(
        model,
        include_bias=config.include_bias,
        include_first=config.include_first,
        include_last=config.include_last,
        layers=config.layers,
        exclude=config.exclude,
    )
    for name, (module, tensor) in targets.items():
        require_finite(name, getattr(module, tensor), "pruning")
    sparsities = plan(
        config.schedule, config.amount, config.rounds, config.initial_amount, config.spacing
    )
    layer_plan = tensor_layer_plan(config, targets, model)
    n_params = sum(p.numel() for p in model.parameters())
    return PrunePlan(
        config, crit, targets, sparsities, layer_plan, loss, resolve_loss(loss),
        n_params, left_dense(model, targets),
    )  # fmt: skip


def prune_rounds(
    model: nn.Module,
    prepared: PrunePlan,
    data: DataLike | None = None,
    *,
    device: torch.device,
    progress: bool = True,
    start: int = 1,
) -> Iterator[dict[str, Any]]:
    """Run rounds ``start..R`` of ``prepared`` on ``model`` (on ``device``), yielding each
    round's record when it is complete. Every random choice of round ``r`` is seeded from
    ``seed + r``, so rounds ``k..R`` after a restored round ``k - 1`` end where an
    uninterrupted run does."""
    if prepared.groups is not None:
        from ..structured.api import unit_round as round_fn
    else:
        round_fn = _round
    for r in range(start, len(prepared.sparsities) + 1):
        began = time.perf_counter()
        with memory.budget(prepared.config.max_memory):
            record = round_fn(model, prepared, r, data, device, progress)
        if data is not None:  # measured as pruned, fine-tuned, measured again
            record.update(
                tune_and_measure(
                    model,
                    prepared.config,
                    r,
                    len(prepared.sparsities),
                    data,
                    loss=prepared.loss,
                    device=device,
                    progress=progress,
                )  # fmt: skip
            )
        record["seconds"] = round(time.perf_counter() - began, 3)
        yield record


def _plan_units(model: nn.Module, config: PruneConfig, data, loss) -> PrunePlan:
    """The plan of a structured prune: unit groups, a unit criterion, the round fractions."""
    from ..structured.api import group_targets, unit_criterion_name, unit_groups
    from ..structured.scores import make_unit_criterion

    crit = make_unit_criterion(unit_criterion_name(config.criterion), **config.criterion_options)
    if (crit.needs_data or config.finetune_epochs) and data is None:
        raise ConfigError(
            f"structured pruning by {config.criterion!r} (or fine-tuning) needs data; pass data=..."
        )
    if data is not None:
        loss = task_loss(loss, as_dataset(data, "train"))
    groups = unit_groups(model, config, data)
    targets = group_targets(model, groups)
    sparsities = plan(
        config.schedule, config.amount, config.rounds, config.initial_amount, config.spacing
    )
    n_params = sum(p.numel() for p in model.parameters())
    layer_plan = unit_layer_plan(config, groups)
    return PrunePlan(
        config, crit, targets, sparsities, layer_plan, loss, resolve_loss(loss), n_params, {},
        groups,
    )  # fmt: skip


def result_of(prepared: PrunePlan, records: list[dict[str, Any]]) -> PruneResult:
    """The :class:`PruneResult` of the rounds in ``records`` (masks read from the model)."""
    keep = current_masks(prepared.targets)
    damages = [r["predicted_damage"] for r in records]
    damage = None if not damages or None in damages else float(sum(damages))
    pruned = sum(int((~k).sum()) for k in keep.values())
    return PruneResult(
        sparsity(keep),
        total_sparsity(keep),
        damage,
        records,
        prepared.config,
        model_sparsity=pruned / prepared.parameters if prepared.parameters else None,
        left_dense=dict(prepared.left_dense),
    )


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake the pruning masks into the weights (zeros stay, masks go); other state stays."""
    return state.make_permanent(model, kinds={"mask"})


def _round(model, prepared: PrunePlan, r: int, data, device, progress) -> dict[str, Any]:
    config, crit = prepared.config, prepared.criterion
    prev = prepared.sparsities[r - 2] if r > 1 else 0.0
    target = prepared.sparsities[r - 1]
    calib = (
        _calibration(data, config.samples, config.seed + r, config.criterion, crit.needs_data)
        if data is not None
        else None
    )
    damages, step = [], {}
    with preserved_modes(model, "eval"):
        for j in range(1, config.obs_steps + 1):
            frac = j / config.obs_steps
            amount = prev + (target - prev) * frac
            layers = interpolate(prepared.layer_plan, r, frac)
            if amount <= 0 and not layers:
                continue
            step = prune_step(
                model,
                crit,
                config,
                prepared.targets,
                amount=amount,
                layer_amounts=layers,
                data=calib,
                seed=config.seed + r,
                device=device,
                progress=progress,
                loss_fn=prepared.loss_fn,
            )
            damages.append(step.pop("predicted_damage"))
    keep = current_masks(prepared.targets)
    record: dict[str, Any] = {
        "round": r,
        "target_sparsity": target,
        "sparsity": total_sparsity(keep),
        "layer_sparsity": sparsity(keep),
        "predicted_damage": None if None in damages or not damages else sum(damages),
        **({"lam": step["lam"]} if "lam" in step else {}),
        **_chosen(crit),
    }
    return record


def _chosen(crit: Criterion) -> dict[str, Any]:
    """What a criterion chose by itself (OBS: the block size its memory budget allowed)."""
    if not hasattr(crit, "chosen_block_size_"):
        return {}
    block = crit.chosen_block_size_
    return {"obs_inverse": "exact" if block is None else f"WoodFisher blocks of {block}"}


def _calibration(data, samples: int, seed: int, criterion: str, needs: bool) -> Dataset | None:
    if data is None:
        if needs:
            raise ConfigError(
                f"criterion {criterion!r} needs data to measure the loss; pass "
                "data=... (CLI: the run's training split, --samples N to limit it)"
            )
        return None
    return as_dataset(data, "train").subset(samples, seed=seed)


__all__ = [
    "CRITERIA",
    "PrunePlan",
    "PruneConfig",
    "PruneResult",
    "make_context",
    "make_permanent",
    "plan_prune",
    "prune",
    "prune_rounds",
    "result_of",
    "saliency",
]
