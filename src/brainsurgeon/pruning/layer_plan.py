"""Per-round, per-layer sparsities for ``PruneConfig.layer_sparsity``.

``layer_sparsity`` maps layers (or unit groups) to final fractions; unlisted ones take
``amount``. Each gets the config's schedule (``plan``) on its own final fraction, so round
``r`` of an iterative or gradual prune reaches ``plan[r]`` of every layer at once.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError, UnsupportedLayerError
from ..models.adapters import Targets, supported_types
from ..models.adapters.tensors import layout_rule
from .config import PruneConfig
from .schedules import plan

LayerPlan = list[dict[str, float]]  # round -> {layer or group: fraction pruned}


def _rounds(config: PruneConfig, finals: dict[str, float]) -> LayerPlan:
    """The schedule of every layer to its final fraction, one dict per round."""
    per_layer = {
        n: plan(config.schedule, a, config.rounds, config.initial_amount, config.spacing)
        if a > 0
        else [0.0] * config.rounds
        for n, a in finals.items()
    }
    return [{n: p[r] for n, p in per_layer.items()} for r in range(config.rounds)]


def tensor_layer_plan(config: PruneConfig, targets: Targets, model: nn.Module) -> LayerPlan | None:
    """Per-round per-tensor fractions (keys: tensor names; a layer name means its
    ``.weight``); None without ``layer_sparsity``. An unknown or ineligible name is refused
    with the eligible ones."""
    if config.layer_sparsity is None:
        return None
    wanted = {}
    for key, value in config.layer_sparsity.items():
        name = key if key in targets else f"{key}.weight"
        if name not in targets:
            module = dict(model.named_modules()).get(key.removesuffix(".weight"))
            if module is not None and layout_rule(module) is None:
                raise UnsupportedLayerError(
                    f"layer_sparsity names {key!r}, a {type(module).__name__}: not a "
                    f"compressible layer (supported: {', '.join(supported_types())}); "
                    f"eligible: {', '.join(targets)}"
                )
            raise ConfigError(
                f"layer_sparsity names {key!r}, which is not an eligible tensor; "
                f"eligible: {', '.join(targets)}"
            )
        wanted[name] = float(value)
    return _rounds(config, {n: wanted.get(n, config.amount) for n in targets})


def unit_layer_plan(config: PruneConfig, groups) -> LayerPlan | None:
    """Per-round fractions of units per group (keys: group names such as ``fc1``) for
    structured pruning; None without ``layer_sparsity``."""
    if config.layer_sparsity is None:
        return None
    names = [g.name for g in groups]
    wanted = {}
    for key, value in config.layer_sparsity.items():
        name = key.removesuffix(".weight")
        if name not in names:
            raise ConfigError(
                f"layer_sparsity names {key!r}, which is not a {config.granularity} group; "
                f"groups: {', '.join(names)}"
            )
        wanted[name] = float(value)
    return _rounds(config, {n: wanted.get(n, config.amount) for n in names})


def interpolate(layer_plan: LayerPlan | None, r: int, frac: float) -> dict[str, float] | None:
    """Round ``r``'s (1-based) fractions a fraction ``frac`` of the way from round ``r - 1``'s
    (gradual schedules step inside a round)."""
    if layer_plan is None:
        return None
    prev = layer_plan[r - 2] if r > 1 else {n: 0.0 for n in layer_plan[0]}
    return {n: prev[n] + (a - prev[n]) * frac for n, a in layer_plan[r - 1].items()}
