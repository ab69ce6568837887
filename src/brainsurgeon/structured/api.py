"""Structured pruning through the ordinary prune verb, and ``shrink``: make it physically small.

``prune(model, PruneConfig(granularity="neuron", criterion="l2", amount=0.5), data)`` scores
whole units (:mod:`.scores`), selects the ``amount`` fraction of units to remove (per layer,
or one global ranking), masks every tensor slice of each removed unit (:mod:`.masks`) and
fine-tunes, round by round, like element pruning (same schedules, fine-tuning, checkpoints and
``resume`` through :func:`brainsurgeon.pipeline.prune_run`). ``group-obs`` also refits the
consumer layer for the removed units (structured layer-wise OBS). ``shrink(model)`` then cuts
every dead unit out (:mod:`.surgery`): a smaller dense model, recorded as an edit so
``brainsurgeon.load`` rebuilds it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.core import as_dataset
from ..errors import ConfigError
from .graph import find_groups
from .groups import Group
from .masks import apply_unit_mask
from .scores import make_unit_criterion
from .surgery import find_dead_units, shrink
from .unit_selection import select_units

STRUCTURED = ("neuron", "channel", "head")
ALIASES = {"magnitude": "l2"}  # the element criterion's name for the unit norm
LOSS_SCALE = {"obd", "obd-sd", "true-damage", "dropout-regression", "group-obs"}


def unit_criterion_name(criterion: str) -> str:
    return ALIASES.get(criterion, criterion)


def check_granularity(granularity: str, criterion: str, options: dict[str, Any]) -> None:
    """Validate a structured prune's granularity and unit criterion (PruneConfig calls this)."""
    if granularity not in STRUCTURED:
        raise ConfigError(
            f"granularity {granularity!r} cannot be pruned yet; use element, "
            f"{', '.join(STRUCTURED)}"
        )
    make_unit_criterion(unit_criterion_name(criterion), **options)


def example_of(model: nn.Module, data) -> torch.Tensor:
    """Two inputs to trace ``model`` with: from the data, else zeros of its recorded shape."""
    if data is not None:
        return as_dataset(data, "train").x[:2]
    from ..metrics import example_input
    from ..state import spec_of

    spec = spec_of(model)
    if spec is None:
        raise ConfigError("structured pruning needs data (or a model built by build_model)")
    return example_input(tuple(spec["input_shape"]), model)


def unit_groups(model: nn.Module, config, data) -> list[Group]:
    """The removable groups of ``config.granularity``, filtered by ``layers`` / ``exclude``."""
    groups = find_groups(model, example_of(model, data), granularity=config.granularity)
    keep = [g for g in groups if _chosen(g.name, config.layers, config.exclude)]
    if not keep:
        names = ", ".join(g.name for g in groups) or "none"
        raise ConfigError(
            f"no {config.granularity} group to prune (groups found: {names}); check "
            "--granularity, --layers and --exclude"
        )
    return keep


def _chosen(name: str, layers, exclude) -> bool:
    if layers and not any(fnmatch.fnmatchcase(name, p) for p in layers):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude or ())


def group_targets(model: nn.Module, groups: list[Group]) -> dict[str, tuple[nn.Module, str]]:
    """Every parameter a group's mask touches, as prune targets (``name -> (module, tensor)``)."""
    out = {}
    for g in groups:
        for s in g.slices():
            module = model.get_submodule(s.module)
            if s.tensor not in dict(module.named_buffers(recurse=False)):
                out[f"{s.module}.{s.tensor}" if s.module else s.tensor] = (module, s.tensor)
    return out


def unit_round(model, prepared, r: int, data, device, progress) -> dict[str, Any]:
    """One structured round: score, select the round's fraction, (compensate,) mask; the
    prune driver fine-tunes and measures it like an element round."""
    config = prepared.config
    target = prepared.sparsities[r - 1]
    calib = None
    if data is not None:
        calib = as_dataset(data, "train").subset(config.samples, seed=config.seed + r)
    crit = prepared.criterion
    scores = {}
    for g in prepared.groups:
        s = crit.score(model, g, calib, loss=prepared.loss, batch_size=config.batch_size)
        dead = find_dead_units(model, [g])[g.name]
        floor = s[~dead].min() - s[~dead].abs().max() - 1 if bool((~dead).any()) else s.min()
        scores[g.name] = torch.where(dead, floor.expand_as(s), s)  # removed units stay removed
    normalize = "none" if crit.name in LOSS_SCALE else "l2"
    scheme = "global" if config.scheme == "global" else "per-layer"
    if prepared.layer_plan is not None:  # per-group fractions (layer_sparsity)
        fractions = prepared.layer_plan[r - 1]
        keeps = {}
        for name, s in scores.items():
            keeps.update(select_units({name: s}, fractions[name], scheme="per-layer"))
    else:
        keeps = select_units(scores, target, scheme=scheme, normalize=normalize)
    for g in prepared.groups:
        if hasattr(crit, "compensate") and calib is not None:
            crit.compensate(model, g, keeps[g.name], calib)
        apply_unit_mask(model, g, keeps[g.name])
    record: dict[str, Any] = {"round": r, "target_sparsity": target}
    record["units"] = {g.name: [int(keeps[g.name].sum()), g.units] for g in prepared.groups}
    removed = sum(g.units - int(keeps[g.name].sum()) for g in prepared.groups)
    record["sparsity"] = removed / max(sum(g.units for g in prepared.groups), 1)
    record["predicted_damage"] = None
    return record


@dataclass(frozen=True)
class ShrinkResult:
    """What :func:`shrink_model` removed: per group ``[kept, before]`` units, and the
    parameter counts before and after."""

    units: dict[str, list[int]]
    params_before: int
    params_after: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "notes": self.notes,
        }


def shrink_model(model: nn.Module, example=None, *, tol: float = 0.0) -> ShrinkResult:
    """Cut every dead unit (all its producer weights, biases and affines within ``tol`` of
    0: structured masks, group lasso) out of ``model`` in place; a smaller dense model whose
    outputs equal the masked one's. Groups of every granularity are considered."""
    groups = find_groups(model, example if example is not None else example_of(model, None))
    dead = find_dead_units(model, groups, tol=tol)
    before = sum(p.numel() for p in model.parameters())
    chosen, notes = {}, []
    for g in groups:
        if bool(dead[g.name].all()):
            notes.append(f"{g.name}: every unit is dead; kept one so the model stays connected")
            keep = torch.zeros(g.units, dtype=torch.bool)
            keep[0] = True
        else:
            keep = ~dead[g.name]
        if not bool(keep.all()):
            chosen[g] = keep
    if chosen:
        shrink(model, chosen)
    after = sum(p.numel() for p in model.parameters())
    units = {g.name: [int(k.sum()), g.units] for g, k in chosen.items()}
    return ShrinkResult(units, before, after, notes)


def structured_widths(history: list) -> dict[str, list[int]]:
    """``{layer: [units at first, units now]}`` from the shrink / merge steps of a history."""
    widths: dict[str, list[int]] = {}
    for step in history if isinstance(history, list) else []:
        units = step.get("units") if isinstance(step, dict) else None
        for name, pair in (units if isinstance(units, dict) else {}).items():
            if isinstance(pair, list) and len(pair) == 2:  # else: a damaged record, skipped
                kept, before = pair
                widths[name] = [widths.get(name, [before])[0], kept]
    return widths
