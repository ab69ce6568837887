"""Multiply-adds per layer type, measured by forward hooks on one example input.

A map from layer class to rule (resolved through the MRO, so parametrized and user subclasses
work); each rule sees the module's inputs and output and returns the multiply-adds (MACs) of
that call, dense and with a nonzero weight only (masked weights are read through their
parametrization, so a pruned weight counts as zero):

* ``Linear`` (in -> out) on R rows (positions): ``R * out * in``;
* ``Conv*``: ``P_out * out * in / groups * prod(kernel)`` (``P_out`` output positions);
  ``ConvTranspose*``: ``P_in * in * out / groups * prod(kernel)``;
* ``LSTM`` / ``GRU`` / ``RNN``, per time step, layer and direction: the gate matrices,
  ``gates * (in * h + h * h)`` with 4 gates for LSTM, 3 for GRU and 1 for RNN (plus the
  projection ``proj * h`` of an LSTM with ``proj_size``); elementwise gate arithmetic is not
  counted;
* ``MultiheadAttention`` with query length L, key length S, width E: the projections
  ``L E^2 + S E kdim + S E vdim``, the scores ``QK^T`` (``L S E``) and the weighted values
  ``AV`` (``L S E``; activation products, so dense = nonzero), attributed to the attention
  layer, and the output projection ``L E^2``, attributed to its ``out_proj`` child (which the
  attention uses functionally, so its own forward never runs);
* ``Embedding``: 0 MACs; its ``lookups`` are the number of indices read.

Modules that only look like a Linear (``in_features``, ``out_features`` and a ``weight``, e.g.
a hashed layer) use the Linear rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.utils.rnn import PackedSequence

from ..utils import preserved_modes
from .inputs import Example, call


@dataclass
class OpCount:
    """MACs of one layer on the example: ``dense``, ``nonzero`` (nonzero weights only),
    ``positions`` (outputs per bias entry, i.e. bias adds per bias value) and ``lookups``."""

    dense: int = 0
    nonzero: int = 0
    positions: int = 0
    lookups: int = 0

    def add(self, other: OpCount) -> None:
        self.dense += other.dense
        self.nonzero += other.nonzero
        self.positions += other.positions
        self.lookups += other.lookups


Rule = Callable[[nn.Module, tuple, dict, Any], dict[str, OpCount]]
MAC_RULES: dict[type[nn.Module], Rule] = {}


def register_macs(*classes: type[nn.Module]) -> Callable[[Rule], Rule]:
    """Decorator: ``rule(module, args, kwargs, output) -> {"" or child name: OpCount}``."""

    def deco(rule: Rule) -> Rule:
        for cls in classes:
            MAC_RULES[cls] = rule
        return rule

    return deco


def _nnz(t: Tensor) -> int:
    return int(torch.count_nonzero(t.detach()))


def _first(args: tuple, kwargs: dict, name: str, index: int = 0) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


@register_macs(nn.Linear)
def _linear(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> dict[str, OpCount]:
    weight = module.weight
    rows = output.numel() // max(output.shape[-1], 1) if output.dim() else 1
    return {"": OpCount(rows * weight.numel(), rows * _nnz(weight), rows)}


@register_macs(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> dict[str, OpCount]:
    weight = module.weight
    positions = output.numel() // module.out_channels
    return {"": OpCount(positions * weight.numel(), positions * _nnz(weight), positions)}


@register_macs(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transposed(module: nn.Module, args: tuple, kwargs: dict, output: Tensor):
    weight, x = module.weight, _first(args, kwargs, "input")
    inputs = x.numel() // module.in_channels
    positions = output.numel() // module.out_channels
    return {"": OpCount(inputs * weight.numel(), inputs * _nnz(weight), positions)}


@register_macs(nn.RNNBase)
def _recurrent(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> dict[str, OpCount]:
    x = _first(args, kwargs, "input")
    if isinstance(x, PackedSequence):
        steps = int(x.data.shape[0])  # every (sample, step) pair of the packed batch
    else:
        steps = x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[1]
    count = OpCount(positions=steps)
    for name in module._flat_weights_names:
        if name.startswith("weight_"):
            weight = getattr(module, name)
            count.dense += steps * weight.numel()
            count.nonzero += steps * _nnz(weight)
    return {"": count}


def _attention_lengths(module: nn.MultiheadAttention, q: Tensor, k: Tensor) -> tuple[int, ...]:
    """``(N, L, S)``: batch, query length, key length (unbatched inputs have N = 1)."""
    if q.dim() == 2:
        return 1, q.shape[0], k.shape[0]
    if module.batch_first:
        return q.shape[0], q.shape[1], k.shape[1]
    return q.shape[1], q.shape[0], k.shape[0]


@register_macs(nn.MultiheadAttention)
def _attention(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> dict[str, OpCount]:
    q, k = _first(args, kwargs, "query", 0), _first(args, kwargs, "key", 1)
    n, length, keys = _attention_lengths(module, q, k)
    e = module.embed_dim
    if module._qkv_same_embed_dim:
        w = module.in_proj_weight
        wq, wk, wv = w[:e], w[e : 2 * e], w[2 * e :]
    else:
        wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    scores = 2 * n * length * keys * e  # QK^T and AV
    dense = n * (length * wq.numel() + keys * (wk.numel() + wv.numel())) + scores
    nonzero = n * (length * _nnz(wq) + keys * (_nnz(wk) + _nnz(wv))) + scores
    out = module.out_proj.weight
    return {
        "": OpCount(dense, nonzero, n * length),
        "out_proj": OpCount(n * length * out.numel(), n * length * _nnz(out), n * length),
    }


@register_macs(nn.Embedding, nn.EmbeddingBag)
def _embedding(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> dict[str, OpCount]:
    indices = _first(args, kwargs, "input")
    return {"": OpCount(lookups=int(indices.numel()))}


def mac_rule(module: nn.Module) -> Rule | None:
    """The rule for ``module``'s class (through the MRO), the Linear rule for a Linear-like
    module (``in_features``, ``out_features`` and ``weight``), or None."""
    for cls in type(module).__mro__:
        if cls in MAC_RULES:
            return MAC_RULES[cls]
    if isinstance(module, _ConvNd | _ConvTransposeNd):
        return None
    if all(hasattr(module, a) for a in ("in_features", "out_features", "weight")):
        return _linear
    return None


def count_ops(model: nn.Module, example: Example) -> dict[str, OpCount]:
    """``{layer name: OpCount}`` for one forward pass of ``model`` on ``example``.

    The pass runs in eval mode with autograd on (so PyTorch's fused inference paths, which
    bypass the modules' own forward calls, are not taken); every counted module's calls add up.
    """
    found: dict[str, OpCount] = {}
    handles = []
    for name, module in model.named_modules():
        if ".parametrizations." in f".{name}." or name.startswith("parametrizations."):
            continue
        rule = mac_rule(module)
        if rule is not None:
            handles.append(module.register_forward_hook(_hook(found, name, rule), with_kwargs=True))
    try:
        with preserved_modes(model, "eval"), torch.enable_grad():
            call(model, example)
    finally:
        for h in handles:
            h.remove()
    return found


def _hook(found: dict[str, OpCount], name: str, rule: Rule):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        with torch.no_grad():
            counts = rule(module, args, kwargs, output)
        for child, count in counts.items():
            key = ".".join(p for p in (name, child) if p)
            found.setdefault(key, OpCount()).add(count)

    return hook


__all__ = ["MAC_RULES", "OpCount", "count_ops", "mac_rule", "register_macs"]
