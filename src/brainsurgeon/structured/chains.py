"""Neuron groups of plain MLPs and the rebuild of a producer/consumer Linear pair.

A STAND-IN for the dependency tracer (``find_groups`` in :mod:`.graph`) for models whose
``nn.Linear`` layers form one chain in module order, such as ``build_model("mlp:...")`` and
``build_model("lenet300")``: ``Flatten -> fc1 -> ReLU -> fc2 -> ReLU -> ... -> fcK``. Each
Linear but the last gives one ``"neuron"`` group whose units are its outputs (weight rows and
bias) read by the next Linear's weight columns. It does not look at ``forward``: a model that
reorders, branches or reuses its layers needs the tracer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UnsupportedLayerError
from .groups import Group, Slice

# Modules allowed between a producer and its consumer when units are merged: each f satisfies
# f(c x) = c f(x) for c > 0 (positive homogeneity), which merging by rescaling needs.
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Identity)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not any(m.children())]


def linear_chain_groups(model: nn.Module) -> list[Group]:
    """One neuron group per ``nn.Linear`` followed (in module order) by another ``nn.Linear``.

    Group ``fc1`` of LeNet-300-100: ``units=300``, producers ``fc1.weight`` axis 0 (300 x 784)
    and ``fc1.bias`` axis 0, consumer ``fc2.weight`` axis 1 (100 x 300). The last Linear (the
    classifier) has no group.
    """
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    groups = []
    for (name, layer), (nxt, _) in zip(linears[:-1], linears[1:], strict=True):
        producers = [Slice(name, "weight", 0)]
        if layer.bias is not None:
            producers.append(Slice(name, "bias", 0))
        groups.append(
            Group(
                name=name,
                kind="neuron",
                units=layer.out_features,
                producers=tuple(producers),
                consumers=(Slice(nxt, "weight", 1),),
                notes=("linear chain (module order)",),
            )
        )
    return groups


def linear_pair(model: nn.Module, group: Group) -> tuple[str, str]:
    """The (producer, consumer) Linear names of a group this module can rewrite.

    Raises UnsupportedLayerError for anything but one plain, unparametrized ``nn.Linear`` whose
    outputs (``weight`` axis 0, optional ``bias``) feed one ``nn.Linear``'s ``weight`` axis 1.
    """
    heads = {(s.module, s.tensor, s.axis, s.unit_size, s.offset) for s in group.producers}
    names = {s.module for s in group.producers}
    cons = group.consumers
    if len(names) != 1 or len(cons) != 1 or (cons[0].tensor, cons[0].axis) != ("weight", 1):
        raise UnsupportedLayerError(
            f"group {group.name!r}: merging rewrites one Linear's rows and the next Linear's "
            f"columns; found producers {sorted(names)} and {len(cons)} consumer(s); use "
            "linear_chain_groups(model) or a group of that shape"
        )
    producer, consumer = names.pop(), cons[0].module
    if (producer, "weight", 0, 1, 0) not in heads or cons[0].unit_size != 1 or cons[0].offset:
        raise UnsupportedLayerError(
            f"group {group.name!r}: expected Slice({producer!r}, 'weight', 0) with unit_size 1 "
            "and offset 0 among the producers and a consumer with unit_size 1, offset 0"
        )
    for name in (producer, consumer):
        module = model.get_submodule(name)
        if type(module) is not nn.Linear or parametrize.is_parametrized(module):
            raise UnsupportedLayerError(
                f"{name} is a {type(module).__name__}"
                + (" with parametrizations" if parametrize.is_parametrized(module) else "")
                + "; merging rebuilds plain nn.Linear layers: call "
                "brainsurgeon.make_permanent(model) first, or pick another group"
            )
    return producer, consumer


def check_homogeneous(model: nn.Module, producer: str, consumer: str) -> None:
    """Raise UnsupportedLayerError unless every module between the two (in module order) is
    positively homogeneous (ReLU, LeakyReLU, Dropout, Identity)."""
    names = [n for n, _ in _leaves(model)]
    between = _leaves(model)[names.index(producer) + 1 : names.index(consumer)]
    for name, module in between:
        if not isinstance(module, HOMOGENEOUS):
            raise UnsupportedLayerError(
                f"{name} ({type(module).__name__}) sits between {producer} and {consumer}; "
                "merging rescales and sums units, which is exact only for positively "
                "homogeneous activations (f(c x) = c f(x) for c > 0: ReLU, LeakyReLU). "
                "Use prune_units for other activations"
            )


def rebuild_pair(
    model: nn.Module,
    producer: str,
    consumer: str,
    keep: torch.Tensor,
    next_weight: torch.Tensor,
) -> None:
    """Replace ``producer`` by a Linear with rows ``keep`` and ``consumer`` by one with weight
    ``next_weight`` (n_next x |keep|) and its old bias; modules are swapped in place."""
    old_p, old_c = model.get_submodule(producer), model.get_submodule(consumer)
    kw = {"device": old_p.weight.device, "dtype": old_p.weight.dtype}
    new_p = nn.Linear(old_p.in_features, len(keep), bias=old_p.bias is not None, **kw)
    new_c = nn.Linear(len(keep), old_c.out_features, bias=old_c.bias is not None, **kw)
    with torch.no_grad():
        new_p.weight.copy_(old_p.weight[keep])
        if old_p.bias is not None:
            new_p.bias.copy_(old_p.bias[keep])
        new_c.weight.copy_(next_weight)
        if old_c.bias is not None:
            new_c.bias.copy_(old_c.bias)
    for name, new, old in ((producer, new_p, old_p), (consumer, new_c, old_c)):
        new.train(old.training)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, new)
