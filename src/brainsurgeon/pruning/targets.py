"""Which tensors a pruning step may touch.

By default the weights of every Linear and Conv layer; biases, the first and the last layer
(in module order) are configurable. Names are the parameter names of ``state_dict`` without
parametrization plumbing: ``"fc1.weight"``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..errors import ConfigError, UnsupportedLayerError

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear/Conv layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def eligible_targets(
    model: nn.Module,
    *,
    include_bias: bool = False,
    include_first: bool = True,
    include_last: bool = True,
    layers: Iterable[str] | None = None,
) -> dict[str, tuple[nn.Module, str]]:
    """``{"fc1.weight": (module, "weight"), ...}`` of the tensors a pruning step may touch.

    ``layers``: restrict to these layer (or tensor) names; an unknown or unsupported name is
    an error listing the valid ones.
    """
    found = prunable_layers(model)
    if not found:
        raise UnsupportedLayerError(
            f"{type(model).__name__} has no Linear or Conv layer to prune; brainsurgeon prunes "
            "nn.Linear and nn.Conv1d/2d/3d weights"
        )
    if not include_first:
        found = found[1:]
    if not include_last:
        found = found[:-1]
    if layers is not None:
        found = _restrict(model, found, set(layers))
    targets: dict[str, tuple[nn.Module, str]] = {}
    for name, module in found:
        targets[f"{name}.weight"] = (module, "weight")
        if include_bias and getattr(module, "bias", None) is not None:
            targets[f"{name}.bias"] = (module, "bias")
    if not targets:
        raise ConfigError(
            "no tensor is left to prune: the model's only prunable layers are "
            "excluded (include_first / include_last); include them"
        )
    return targets


def _restrict(model, found, wanted: set[str]):
    names = {n for n, _ in found}
    layer_names = {w.removesuffix(".weight").removesuffix(".bias") for w in wanted}
    unknown = sorted(layer_names - names)
    if unknown:
        modules = dict(model.named_modules())
        bad = [n for n in unknown if n in modules]
        if bad:
            kinds = ", ".join(f"{n} ({type(modules[n]).__name__})" for n in bad)
            raise UnsupportedLayerError(
                f"cannot prune {kinds}: only Linear and Conv layers are supported; "
                f"eligible layers: {', '.join(sorted(names))}"
            )
        raise ConfigError(
            f"unknown layer(s) {unknown}; eligible layers: {', '.join(sorted(names))}"
        )
    return [(n, m) for n, m in found if n in layer_names]
