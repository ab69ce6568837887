"""How each layer and operation moves units: the rules :class:`.graph.Walker` dispatches to.

A rule is ``rule(walker, node) -> Axis | None``: it reads the axes of the node's inputs
(``walker.axis(arg)``), records slices or merges spaces, and returns the axis of the node's
value (None: no unit dimension a group owns). Rules are keyed by module class (matched along
the class hierarchy, so parametrized and user subclasses match), by function, or by
``Tensor`` method name. Users add theirs with :func:`register_rule`.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .attention import SlimMultiheadAttention
from .attention_rules import attention, encoder
from .graph import Axis, Part, Walker

Rule = Callable[[Walker, fx.Node], "Axis | None"]
MODULE_RULES: dict[type[nn.Module], Rule] = {}
FUNCTION_RULES: dict[Any, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}


def _arg(node: fx.Node, i: int, name: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def passthrough(w: Walker, node: fx.Node) -> Axis | None:
    """Per-unit ops (activations, dropout, identity, casts): the axis passes unchanged."""
    return w.axis(node.args[0]) if node.args else None


def opaque(w: Walker, node: fx.Node) -> None:
    """Values that are not tensors over units (``x.size()``, ``x.shape``)."""
    return None


def pin(w: Walker, node: fx.Node) -> None:
    """An op that needs every unit of its inputs (their units become unremovable)."""
    for a in w.inputs(node):
        w.pin(a, f"feeds {node.name}, which needs all of its units")
    return None


STANDARD = {"passthrough": passthrough, "pin": pin}


def register_rule(target: type[nn.Module] | Callable | str, rule: str | Rule) -> None:
    """Teach the dependency tracer a layer type, a function or a ``Tensor`` method name.

    ``rule``: ``"passthrough"`` (per-unit: the unit dimension is untouched), ``"pin"`` (it
    needs all units: its inputs cannot be pruned) or ``rule(walker, node) -> Axis | None``.
    A module type with a rule is traced as one layer; a function needs ``torch.fx.wrap`` so
    the tracer records it instead of tracing through it.
    """
    if isinstance(rule, str):
        if rule not in STANDARD:
            raise ConfigError(f"unknown rule {rule!r}; valid: {', '.join(STANDARD)} or a callable")
        rule = STANDARD[rule]
    if isinstance(target, type) and issubclass(target, nn.Module):
        MODULE_RULES[target] = rule
    elif isinstance(target, str):
        METHOD_RULES[target] = rule
    elif callable(target):
        FUNCTION_RULES[target] = rule
    else:
        raise ConfigError(
            f"cannot register a rule for {target!r}; pass a module class, a "
            "function or a Tensor method name"
        )


def module_rule(m: nn.Module) -> Rule | None:
    for cls in type(m).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return None


def rule_for(w: Walker, node: fx.Node) -> Rule | None:
    if node.op == "call_module":
        return module_rule(w.module(node))
    if node.op == "call_method":
        return METHOD_RULES.get(node.target)
    return FUNCTION_RULES.get(node.target)


# -- producers and consumers ---------------------------------------------------------
def _produce(w: Walker, name: str, kind: str, units: int, dim: int, tensors: list[str]) -> Axis:
    axis = Axis(dim, (Part(w.new_space(name, kind, units), units),))
    for t in tensors:
        w.add_slices(axis, name, t, 0, "producers")
    return axis


def linear(w: Walker, node: fx.Node) -> Axis:
    m, name, a = w.module(node), node.target, w.axis(node.args[0])
    if a is not None:
        if a.dim != -1:
            raise w.error(node, "its input's units are not on the last dimension")
        w.add_slices(a, name, "weight", 1, "consumers")
    tensors = ["weight"] + (["bias"] if m.bias is not None else [])
    return _produce(w, name, "neuron", m.out_features, -1, tensors)


def conv(w: Walker, node: fx.Node) -> Axis | None:
    m, name, a = w.module(node), node.target, w.axis(node.args[0])
    channel_dim = 1 - m.weight.dim()
    if m.groups != 1:
        if a is not None:
            raise w.error(node, f"it is a grouped conv (groups={m.groups})")
        return None
    if a is not None:
        if a.dim != channel_dim:
            raise w.error(node, "its input's units are not on the channel dimension")
        w.add_slices(a, name, "weight", 1, "consumers")
    tensors = ["weight"] + (["bias"] if m.bias is not None else [])
    return _produce(w, name, "channel", m.out_channels, channel_dim, tensors)


def channel_norm(w: Walker, node: fx.Node) -> Axis | None:
    """BatchNorm / InstanceNorm: per-channel affine and running statistics are producers."""
    m, name, a = w.module(node), node.target, w.axis(node.args[0])
    if a is None:
        return None
    if a.dim + len(w.shape(node.args[0])) != 1:
        raise w.error(node, "its input's units are not on the channel dimension")
    for t in ("weight", "bias", "running_mean", "running_var"):
        if getattr(m, t, None) is not None:
            w.add_slices(a, name, t, 0, "producers")
    return a


def layer_norm(w: Walker, node: fx.Node) -> Axis | None:
    m, name, a = w.module(node), node.target, w.axis(node.args[0])
    if a is None or -a.dim > len(m.normalized_shape):
        return a  # the units lie outside the normalized dimensions
    if len(m.normalized_shape) != 1:
        raise w.error(node, "it normalizes over several dimensions including the units")
    if m.weight is None:
        warnings.warn(f"LayerNorm {name} has no affine to slice; its units are kept", stacklevel=2)
        w.pin(a, f"normalized by {name}, which has no affine to slice")
        return a
    for t in ("weight", "bias"):
        if getattr(m, t, None) is not None:
            w.add_slices(a, name, t, 0, "producers")
    w.note(a, f"normalized by LayerNorm {name}")
    return a


def group_norm(w: Walker, node: fx.Node) -> Axis | None:
    a = w.axis(node.args[0])
    if a is not None:
        warnings.warn(
            f"GroupNorm {node.target} mixes the channels of each group; channel pruning "
            "through it is not supported, so those channels are kept",
            stacklevel=2,
        )
        w.pin(a, f"normalized by GroupNorm {node.target}")
    return a


# -- shape ops -----------------------------------------------------------------------
def _flatten(w: Walker, node: fx.Node, x: Any, start: int, end: int) -> Axis | None:
    a = w.axis(x)
    if a is None:
        return None
    shape, out_n = w.shape(x), len(w.shape(node))
    n = len(shape)
    d, start, end = n + a.dim, start % n, end % n
    if d > end:
        return a
    if d < start:
        return Axis(d - out_n, a.parts)
    if d != start:
        raise w.error(node, "it merges the units with an outer dimension")
    return a.scaled(math.prod(shape[d + 1 : end + 1]), d - out_n)


def flatten_module(w: Walker, node: fx.Node) -> Axis | None:
    m = w.module(node)
    return _flatten(w, node, node.args[0], m.start_dim, m.end_dim)


def flatten_call(w: Walker, node: fx.Node) -> Axis | None:
    start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    return _flatten(w, node, node.args[0], start, end)


def reshape(w: Walker, node: fx.Node) -> Axis | None:
    """``view`` / ``reshape`` that keep the shape or flatten the units with inner dims."""
    a = w.axis(node.args[0])
    if a is None:
        return None
    ins, outs = w.shape(node.args[0]), w.shape(node)
    if ins == outs:
        return a
    d = len(ins) + a.dim
    for end in range(d, len(ins)):
        if ins[:d] + (math.prod(ins[d : end + 1]),) + ins[end + 1 :] == outs:
            return a.scaled(math.prod(ins[d + 1 : end + 1]), d - len(outs))
    raise w.error(node, f"it reshapes the unit dimension {list(ins)} -> {list(outs)}")


def transpose(w: Walker, node: fx.Node) -> Axis | None:
    """``transpose`` / ``permute``: the unit dimension moves with its index."""
    a = w.axis(node.args[0])
    if a is None:
        return None
    n = len(w.shape(node.args[0]))
    d = n + a.dim
    if node.target in ("permute", torch.permute):
        dims = node.args[1] if isinstance(node.args[1], (tuple, list)) else node.args[1:]
        return Axis([x % n for x in dims].index(d) - n, a.parts)
    d0, d1 = _arg(node, 1, "dim0", 0) % n, _arg(node, 2, "dim1", 1) % n
    return Axis((d1 if d == d0 else d0 if d == d1 else d) - n, a.parts)


def pool(w: Walker, node: fx.Node) -> Axis | None:
    """Pooling over the last k dims (k from the ``1d/2d/3d`` in the name)."""
    a = w.axis(node.args[0])
    target = type(w.module(node)).__name__ if node.op == "call_module" else str(node.target)
    k = next((int(c) for c in "123" if f"{c}d" in target), 2)
    if a is not None and -a.dim <= k:
        raise w.error(node, "it pools over the unit dimension")
    return a


def reduce(w: Walker, node: fx.Node) -> Axis | None:
    a = w.axis(node.args[0])
    if a is None:
        return None
    n = len(w.shape(node.args[0]))
    dims = _arg(node, 1, "dim", None)
    d = n + a.dim
    dims = None if dims is None else {x % n for x in ([dims] if isinstance(dims, int) else dims)}
    if dims is None or d in dims:
        w.pin(a, f"reduced over by {node.name}")
        return None
    if _arg(node, 2, "keepdim", False):
        return a
    return Axis(a.dim + sum(1 for x in dims if x > d), a.parts)


def softmax(w: Walker, node: fx.Node) -> Axis | None:
    a = w.axis(node.args[0])
    dim = w.module(node).dim if node.op == "call_module" else _arg(node, 1, "dim", None)
    if a is None or dim is None or dim % len(w.shape(node)) == len(w.shape(node)) + a.dim:
        pin(w, node)
        return None
    return a


def elementwise(w: Walker, node: fx.Node) -> Axis | None:
    """add / sub / mul / div: tracked operands index the same units (a residual add merges
    their spaces); a full-size operand no group owns pins them."""
    operands = [x for x in (*node.args, *node.kwargs.values()) if isinstance(x, fx.Node)]
    axes = [w.axis(x) for x in operands]
    tracked = [a for a in axes if a is not None]
    if not tracked:
        return None
    first = tracked[0]
    for a in tracked[1:]:
        w.union(first, a, node)
    for x, a in zip(operands, axes, strict=True):
        shape = w.shape(x)
        if a is None and len(shape) >= -first.dim and shape[first.dim] > 1:
            if x.op == "get_attr":
                raise w.error(node, f"it combines the units with tensor '{x.target}'")
            w.pin(first, f"combined with a full-size unowned tensor at {node.name}")
    return first


def cat(w: Walker, node: fx.Node) -> Axis | None:
    """``torch.cat`` along the unit dim lays the inputs' parts side by side (offsets)."""
    tensors, dim = list(node.args[0]), _arg(node, 1, "dim", 0)
    axes = [w.axis(t) for t in tensors]
    tracked = [a for a in axes if a is not None]
    if not tracked:
        return None
    out_n = len(w.shape(node))
    cdim = dim % out_n - out_n
    if any(a.dim != cdim for a in tracked):
        for a in tracked[1:]:
            w.union(tracked[0], a, node)
        if len(tracked) < len(axes):
            w.pin(tracked[0], f"concatenated with unowned values at {node.name}")
        return tracked[0]
    parts: list[Part] = []
    offset = 0
    for t, a in zip(tensors, axes, strict=True):
        size = w.shape(t)[cdim]
        parts += a.shifted(offset) if a is not None else (Part(None, size, 1, offset),)
        offset += size
    return Axis(cdim, tuple(parts))


# -- the built-in table --------------------------------------------------------------
def _register_builtins() -> None:
    per_unit = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.ELU)
    per_unit += (nn.Hardswish, nn.Hardtanh, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout)
    per_unit += (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    for cls in per_unit:
        MODULE_RULES[cls] = passthrough
    pools = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d)
    pools += (nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
    pools += (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
    for cls in pools:
        MODULE_RULES[cls] = pool
    MODULE_RULES.update({nn.Linear: linear, nn.Conv1d: conv, nn.Conv2d: conv, nn.Conv3d: conv})
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d):
        MODULE_RULES[cls] = channel_norm
    MODULE_RULES.update({nn.InstanceNorm2d: channel_norm, nn.LayerNorm: layer_norm})
    MODULE_RULES.update({nn.GroupNorm: group_norm, nn.Flatten: flatten_module})
    MODULE_RULES.update({nn.Softmax: softmax, nn.LogSoftmax: softmax})
    MODULE_RULES.update({nn.MultiheadAttention: attention, SlimMultiheadAttention: attention})
    MODULE_RULES.update({nn.TransformerEncoderLayer: encoder, nn.TransformerEncoder: encoder})

    unary = (torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.elu, F.hardswish)
    unary += (F.mish, F.softplus, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.dropout)
    unary += (torch.abs, torch.neg, torch.exp, F.dropout1d, F.dropout2d, F.dropout3d)
    FUNCTION_RULES.update(dict.fromkeys(unary, passthrough))
    binary = (operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd)
    binary += (operator.imul, torch.add, torch.sub, torch.mul, torch.div)
    FUNCTION_RULES.update(dict.fromkeys(binary, elementwise))
    fpools = (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d)
    fpools += (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d)
    FUNCTION_RULES.update(dict.fromkeys(fpools, pool))
    FUNCTION_RULES.update({torch.flatten: flatten_call, torch.reshape: reshape, torch.cat: cat})
    FUNCTION_RULES.update({torch.concat: cat, torch.mean: reduce, torch.sum: reduce})
    FUNCTION_RULES.update({torch.amax: reduce, F.softmax: softmax, F.log_softmax: softmax})
    FUNCTION_RULES.update({getattr: opaque, torch.softmax: softmax})
    FUNCTION_RULES.update({torch.transpose: transpose, torch.permute: transpose})

    for name in ("relu", "sigmoid", "tanh", "contiguous", "clone", "float", "to", "detach"):
        METHOD_RULES[name] = passthrough
    for name in ("add", "sub", "mul", "div", "add_", "mul_"):
        METHOD_RULES[name] = elementwise
    METHOD_RULES.update(size=opaque, dim=opaque, flatten=flatten_call, view=reshape)
    METHOD_RULES.update(transpose=transpose, permute=transpose)
    METHOD_RULES.update(reshape=reshape, mean=reduce, sum=reduce, amax=reduce, softmax=softmax)


_register_builtins()
