"""Parameters, nonzeros, bytes and FLOPs, per layer and in total.

Counts use the *effective* tensors (masks and quantizers applied), so a pruned model shows its
real nonzeros. FLOPs follow the usual convention ``FLOPs = 2 * MACs``; ``nonzero`` FLOPs count
only multiply-adds with a nonzero weight (what a sparse kernel would execute). MACs per layer
type are the rules of :mod:`.ops` (Linear, Conv, LSTM/GRU, attention, embeddings), measured on
one example input (:mod:`.inputs`: a tensor, integer token ids, a dict of tensors, data or a
shape). The dense total is also reported by ``torch.utils.flop_counter.FlopCounterMode``
(``flop_counter_flops``), which does not see every op (it counts 0 for an LSTM on CPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..models.adapters import layer_kind
from ..utils import module_device, preserved_modes
from .inputs import ExampleLike, call, example_input
from .ops import count_ops


@dataclass
class LayerStats:
    """One row of the per-layer table (FLOPs per single input sample)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    dense_bytes: int
    stored_bytes: int
    bits_per_weight: float
    macs: int = 0
    nonzero_macs: int = 0
    lookups: int = 0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["sparsity"] = self.sparsity
        d["flops"], d["nonzero_flops"] = 2 * self.macs, 2 * self.nonzero_macs
        return d


def effective_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's own tensors as the forward pass sees them (parametrizations applied)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters(recurse=False):
        out[name] = p
    if parametrize.is_parametrized(module):
        for name in module.parametrizations:
            out[name] = getattr(module, name)
    return out


def _storage_bits(module: nn.Module, name: str, tensor: torch.Tensor) -> int:
    """Bits to store ``tensor``: a quantizer's own accounting, else fp32 (32 bits each)."""
    if parametrize.is_parametrized(module, name):
        for p in reversed(list(module.parametrizations[name])):
            storage = getattr(p, "storage", None)
            if callable(storage):
                return int(storage()["total_bits"])
    return 32 * tensor.numel()


def layer_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own tensors (skipping parametrize's internal containers)."""
    out = []
    for name, module in model.named_modules():
        if ".parametrizations" in f".{name}" or isinstance(module, parametrize.ParametrizationList):
            continue
        if effective_tensors(module):
            out.append((name, module))
    return out


def count_layers(model: nn.Module) -> list[LayerStats]:
    """Per-layer counts (no forward pass)."""
    rows = []
    for name, module in layer_modules(model):
        tensors = effective_tensors(module)
        with torch.no_grad():
            params = sum(t.numel() for t in tensors.values())
            nonzeros = sum(int(torch.count_nonzero(t)) for t in tensors.values())
            bits = sum(_storage_bits(module, n, t) for n, t in tensors.items())
        weight = tensors.get("weight")
        shape = (
            tuple(weight.shape) if weight is not None else tuple(next(iter(tensors.values())).shape)
        )
        rows.append(
            LayerStats(
                name=name or "(model)",
                kind=layer_kind(module),
                shape=shape,
                params=params,
                nonzeros=nonzeros,
                dense_bytes=4 * params,
                stored_bytes=(bits + 7) // 8,
                bits_per_weight=bits / max(params, 1),
            )
        )
    return rows


def count_macs(model: nn.Module, example: ExampleLike) -> dict[str, list[int]]:
    """``{layer: [dense MACs, nonzero-weight MACs]}`` for one sample, by forward hooks.

    ``example``: one input in the model's form, or a shape (see :mod:`.inputs`).
    """
    x = example_input(example, model, module_device(model))
    return {name: [c.dense, c.nonzero] for name, c in count_ops(model, x).items()}


def flop_counter_total(model: nn.Module, example: ExampleLike) -> int:
    """Dense FLOPs of one sample according to ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    x = example_input(example, model, module_device(model))
    counter = FlopCounterMode(display=False)
    with preserved_modes(model, "eval"), torch.enable_grad(), counter:
        call(model, x)
    return int(counter.get_total_flops())


def summarize(model: nn.Module, example: ExampleLike | None = None) -> dict[str, Any]:
    """Per-layer rows and totals: params, nonzeros, sparsity, bytes, bits/weight, FLOPs.

    ``example`` enables FLOP counts: one input as the model takes it (a float tensor, integer
    token ids, a dict of tensors), data to take it from, or a shape such as ``(1, 28, 28)``.
    """
    rows = count_layers(model)
    x = None if example is None else example_input(example, model, module_device(model))
    if x is not None:
        ops = count_ops(model, x)
        for row in rows:
            count = ops.get("" if row.name == "(model)" else row.name)
            if count is not None:
                row.macs, row.nonzero_macs, row.lookups = count.dense, count.nonzero, count.lookups
    params = sum(r.params for r in rows)
    totals: dict[str, Any] = {
        "params": params,
        "nonzeros": sum(r.nonzeros for r in rows),
        "sparsity": 1.0 - sum(r.nonzeros for r in rows) / max(params, 1),
        "dense_bytes": sum(r.dense_bytes for r in rows),
        "stored_bytes": sum(r.stored_bytes for r in rows),
        "flops": 2 * sum(r.macs for r in rows),
        "nonzero_flops": 2 * sum(r.nonzero_macs for r in rows),
        "lookups": sum(r.lookups for r in rows),
    }
    totals["bits_per_weight"] = 8 * totals["stored_bytes"] / max(params, 1)
    totals["compression_ratio"] = totals["dense_bytes"] / max(totals["stored_bytes"], 1)
    if x is not None:
        totals["flop_counter_flops"] = flop_counter_total(model, x)
    return {"layers": [r.to_dict() for r in rows], "totals": totals}
