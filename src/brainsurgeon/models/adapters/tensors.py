"""Which tensors of a model are compressible, and their layout: THE list of layer types.

A map from module class to a layout rule (BackPACK-style dispatch, walking the class
hierarchy so parametrized and user subclasses match). Each rule lists the module's own
compressible tensors with the axis that indexes its output units and the one that indexes its
input units; everything else (norms, HashedNets buckets, positional tables, ...) is left dense
and :func:`left_dense` says why. Register a new layer type with :func:`register_layout`.

Names are ``state_dict`` names without parametrization plumbing: ``"fc1.weight"``,
``"rnn.weight_hh_l0"``, ``"attn.in_proj_weight"``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from ...errors import ConfigError, UnsupportedLayerError

Targets = dict[str, tuple[nn.Module, str]]


@dataclass(frozen=True)
class TensorLayout:
    """One compressible tensor of a module: ``out_axis`` indexes output units (rows of a
    Linear weight, filters of a conv), ``in_axis`` input units (None for a bias);
    ``bias`` marks a bias vector (compressible only with ``include_bias``)."""

    tensor: str
    out_axis: int = 0
    in_axis: int | None = 1
    bias: bool = False


LayoutRule = Callable[[nn.Module], list[TensorLayout]]
LAYOUTS: dict[type[nn.Module], LayoutRule] = {}


def register_layout(cls: type[nn.Module]) -> Callable[[LayoutRule], LayoutRule]:
    """Decorator: ``rule(module) -> [TensorLayout, ...]`` for modules of class ``cls``."""

    def deco(rule: LayoutRule) -> LayoutRule:
        LAYOUTS[cls] = rule
        return rule

    return deco


def _weight_and_bias(module: nn.Module, weight: TensorLayout) -> list[TensorLayout]:
    out = [weight]
    if getattr(module, "bias", None) is not None:
        out.append(TensorLayout("bias", 0, None, bias=True))
    return out


@register_layout(nn.Linear)
def _linear(module: nn.Module) -> list[TensorLayout]:
    return _weight_and_bias(module, TensorLayout("weight", 0, 1))


for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_layout(_conv)(_linear)


def _transposed(module: nn.Module) -> list[TensorLayout]:
    return _weight_and_bias(module, TensorLayout("weight", 1, 0))


for _conv in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_layout(_conv)(_transposed)


def _recurrent(module: nn.Module) -> list[TensorLayout]:
    """LSTM/GRU/RNN: ``weight_ih_l{k}`` (gates*hidden, in) and ``weight_hh_l{k}``; biases."""
    out = []
    for name in module._flat_weights_names:
        if name.startswith("weight_"):
            out.append(TensorLayout(name, 0, 1))
        elif name.startswith("bias_"):
            out.append(TensorLayout(name, 0, None, bias=True))
    return out


for _rnn in (nn.LSTM, nn.GRU, nn.RNN):
    register_layout(_rnn)(_recurrent)


@register_layout(nn.MultiheadAttention)
def _attention(module: nn.Module) -> list[TensorLayout]:
    """The packed q/k/v projection (3E, E) or the three separate ones; ``out_proj`` is a
    Linear child of its own (used functionally by the parent, see the curvature backend)."""
    if module._qkv_same_embed_dim:
        out = [TensorLayout("in_proj_weight", 0, 1)]
    else:
        out = [TensorLayout(f"{p}_proj_weight", 0, 1) for p in "qkv"]
    if module.in_proj_bias is not None:
        out.append(TensorLayout("in_proj_bias", 0, None, bias=True))
    return out


@register_layout(nn.Embedding)
def _embedding(module: nn.Module) -> list[TensorLayout]:
    """(num_embeddings, dim): rows are indexed by the input token, columns are the outputs."""
    return [TensorLayout("weight", 1, 0)]


register_layout(nn.EmbeddingBag)(_embedding)


def layout_rule(module: nn.Module) -> LayoutRule | None:
    for cls in type(module).__mro__:
        if cls in LAYOUTS:
            return LAYOUTS[cls]
    return None


def supported_types() -> list[str]:
    return sorted(c.__name__ for c in LAYOUTS)


def layer_kind(module: nn.Module) -> str:
    """The user's class name (parametrized modules live in a generated subclass)."""
    for cls in type(module).__mro__:
        if not cls.__name__.startswith("Parametrized"):
            return cls.__name__
    return type(module).__name__


def compressible_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module with a layout rule, in module order (not inside a
    parametrization's own plumbing)."""
    out = []
    for name, module in model.named_modules():
        if ".parametrizations." in f".{name}." or name.startswith("parametrizations."):
            continue
        if layout_rule(module) is not None:
            out.append((name, module))
    return out


def layouts(module: nn.Module) -> list[TensorLayout]:
    rule = layout_rule(module)
    return [] if rule is None else rule(module)


def layout_of(module: nn.Module, tensor_name: str) -> TensorLayout:
    """The layout of ``module.<tensor_name>``; a clear error for a tensor with no rule."""
    for item in layouts(module):
        if item.tensor == tensor_name:
            return item
    raise UnsupportedLayerError(
        f"{layer_kind(module)}.{tensor_name} has no layout rule; supported layer types: "
        f"{', '.join(supported_types())} (register one with "
        "brainsurgeon.models.adapters.register_layout)"
    )


def _qualified(layer: str, tensor: str) -> str:
    return f"{layer}.{tensor}" if layer else tensor


def _matches(name: str, layer: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(layer, p) for p in patterns)


def compressible(
    model: nn.Module,
    *,
    include_bias: bool = False,
    include_first: bool = True,
    include_last: bool = True,
    layers: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> Targets:
    """``{"fc1.weight": (module, "weight"), ...}``: the tensors a compression step may touch.

    ``layers`` / ``exclude``: glob patterns (``fnmatch``) on layer or tensor names
    (``"encoder.*"``, ``"*.out_proj"``, ``"fc1.weight"``); ``layers`` keeps only matches,
    ``exclude`` drops them. A pattern that matches nothing is an error listing the names.
    """
    found = compressible_layers(model)
    if not found:
        raise UnsupportedLayerError(
            f"{type(model).__name__} has no compressible layer; supported layer types: "
            f"{', '.join(supported_types())}; register another with "
            "brainsurgeon.models.adapters.register_layout(YourLayer)"
        )
    if not include_first:
        found = found[1:]
    if not include_last:
        found = found[:-1]
    items = [
        (_qualified(layer, t.tensor), layer, module, t)
        for layer, module in found
        for t in layouts(module)
        if include_bias or not t.bias
    ]
    for kind, patterns in (("layers", layers), ("exclude", exclude)):
        patterns = [patterns] if isinstance(patterns, str) else list(patterns or [])
        for p in patterns:
            if not any(_matches(name, layer, [p]) for name, layer, _, _ in items):
                known = ", ".join(sorted({layer for _, layer, _, _ in items}))
                raise ConfigError(
                    f"{kind} pattern {p!r} matches no compressible layer or tensor; "
                    f"layers: {known} (patterns are globs, e.g. 'encoder.*' or '*.out_proj')"
                )
        if patterns:
            keep = kind == "layers"
            items = [i for i in items if _matches(i[0], i[1], patterns) == keep]
    if not items:
        raise ConfigError(
            "no tensor is left to compress: every compressible layer is excluded "
            "(include_first / include_last / layers / exclude); include some"
        )
    return {name: (module, t.tensor) for name, _, module, t in items}


def left_dense(model: nn.Module, targets: Targets) -> dict[str, str]:
    """``{parameter name: why it is not compressed}`` for every parameter not in ``targets``."""
    chosen = {(id(m), t) for m, t in targets.values()}
    out: dict[str, str] = {}
    for layer, module in model.named_modules():
        if ".parametrizations." in f".{layer}." or layer.startswith("parametrizations."):
            continue
        own = _own_tensor_names(module)
        rules = {t.tensor: t for t in layouts(module)}
        for tensor in own:
            if (id(module), tensor) in chosen:
                continue
            name = _qualified(layer, tensor)
            if tensor in rules:
                out[name] = "bias (include_bias to compress)" if rules[tensor].bias else "excluded"
            else:
                out[name] = f"{layer_kind(module)} has no layout rule for {tensor!r}"
    return out


def _own_tensor_names(module: nn.Module) -> list[str]:
    """Direct parameters of ``module`` (a parametrized one counts once, by its name)."""
    names = [n for n, _ in module.named_parameters(recurse=False)]
    plist = getattr(module, "parametrizations", None)
    if plist is not None:
        names += list(plist.keys())
    return names


__all__ = [
    "LAYOUTS",
    "Targets",
    "TensorLayout",
    "compressible",
    "compressible_layers",
    "layer_kind",
    "layout_of",
    "layouts",
    "left_dense",
    "register_layout",
    "supported_types",
]
