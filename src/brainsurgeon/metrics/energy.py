"""Energy per inference and on-chip memory fit, from the Horowitz 45 nm figures.

Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, as used
by Han et al. 2015/2016. Energy per operation (pJ): 32-bit int add 0.1, float add 0.9,
register file 1, int mult 3.1, float mult 3.7, 32-bit SRAM read 5, 32-bit DRAM read 640.

The estimate for one inference (batch of one) counts what compression changes:

* compute: one multiply-accumulate per *nonzero* weight and output position
  (``MACs = nnz * positions``; positions = 1 for Linear, ``H_out * W_out`` for Conv2d, time
  steps for an LSTM/GRU; attention adds its ``QK^T`` and ``AV`` products; see
  :mod:`.ops`), plus one add per bias output. Every layer type of the model adapter
  (:func:`brainsurgeon.models.adapters.compressible_layers`) has a row. Float arithmetic
  (3.7 + 0.9 pJ) for 32-bit weights, integer arithmetic (3.1 + 0.1 pJ) once weights are
  quantized below 32 bits.
* memory: the stored model is read once, in 32-bit words:
  ``E_mem = ceil(stored_bits / 32) * (5 pJ if it fits the SRAM budget else 640 pJ)``.
  With no budget the model is assumed to live in DRAM (the expensive case Han describes:
  1 G connections at 20 fps from DRAM is ``1e9 * 20 * 640 pJ = 12.8 W``).

Stored size of a weight tensor with ``n`` entries, ``nnz`` nonzeros and ``b`` bits per
weight is the smaller of dense ``n * b`` bits and Deep Compression's relative-index sparse
format, ``entries * (b + index_bits)`` bits, where ``entries = nnz + fillers`` and a gap
larger than ``2^index_bits`` between kept entries costs filler zeros (``ceil(gap / 2^k) - 1``
each). Biases are stored dense at 32 bits. Activations are assumed in registers and are
not counted.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedLayerError
from ..models.adapters import compressible_layers, layer_kind, layouts
from ..state import parametrizations_of
from ..utils import module_device
from .inputs import ExampleLike, example_input
from .ops import OpCount, count_ops

PJ = {
    "int_add": 0.1,
    "float_add": 0.9,
    "register_file": 1.0,
    "int_mult": 3.1,
    "float_mult": 3.7,
    "sram_read": 5.0,
    "dram_read": 640.0,
}
INDEX_BITS = {"linear": 5, "conv": 8}  # Deep Compression: 5-bit gaps for fc, 8-bit for conv
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(?P<num>\d+(\.\d+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")

BitsLike = float | int | dict[str, float] | None


def parse_size(text: str | int) -> int:
    """Parse a memory size: ``"512KB"`` -> 524288. Units B, KB, MB, GB (binary: 1 KB = 1024 B)."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    m = _SIZE.match(str(text))
    unit = m["unit"].lower() if m else None
    if not m or unit not in _UNITS or float(m["num"]) <= 0:
        raise ConfigError(
            f"--sram: cannot read {text!r} as a memory size; expected a positive number with "
            "an optional unit B, KB, MB or GB (1 KB = 1024 bytes), e.g. --sram 512KB"
        )
    return int(float(m["num"]) * _UNITS[unit])


def stored_bits(mask: torch.Tensor, bits: float, index_bits: int) -> tuple[int, str]:
    """Bits to store a tensor with keep-pattern ``mask``: ``(bits, "dense" or "sparse")``."""
    flat = mask.reshape(-1).to(torch.bool)
    n = flat.numel()
    dense = math.ceil(n * bits)
    pos = torch.nonzero(flat).reshape(-1)
    if pos.numel() == 0:
        return 0, "sparse"
    gaps = torch.diff(pos, prepend=pos.new_tensor([-1]))
    fillers = int(torch.clamp(torch.ceil(gaps / 2**index_bits) - 1, min=0).sum())
    sparse = math.ceil((pos.numel() + fillers) * (bits + index_bits))
    return (sparse, "sparse") if sparse < dense else (dense, "dense")


def energy_report(
    model: nn.Module,
    example: ExampleLike,
    *,
    bits_per_weight: BitsLike = None,
    sram_bytes: int | str | None = None,
) -> dict[str, Any]:
    """Estimated energy per inference and stored size of ``model`` on one ``example`` sample.

    ``example``: one input as the model takes it, data to take it from, or a shape such as
    ``(1, 28, 28)`` (see :mod:`brainsurgeon.metrics.inputs`).

    ``bits_per_weight``: one number, ``{"fc1": 5, ...}`` per layer, or None to read it from
    quantization parametrizations (``storage()["bits_per_weight"]``; 32 when absent).
    ``sram_bytes``: on-chip budget (int or ``"512KB"``). Returns per-layer rows, totals in pJ
    and µJ, the SRAM verdict and the dense float32 baseline for comparison. Top-level
    shortcuts: ``energy_nj``, ``fits_sram`` (None without a budget), ``encoded_bytes``.
    """
    budget = None if sram_bytes is None else parse_size(sram_bytes)
    ops = count_ops(model, example_input(example, model, module_device(model)))
    layers = [
        _layer_row(name, module, ops.get(name, OpCount()), _bits_for(name, module, bits_per_weight))
        for name, module in _layers(model)
    ]
    other_bytes = _other_param_bytes(model)
    total_bytes = sum(r["stored_bytes"] for r in layers) + other_bytes
    dense_bytes = sum(r["dense_fp32_bytes"] for r in layers) + other_bytes
    compute = sum(r["compute_pj"] for r in layers)
    fits = budget is not None and total_bytes <= budget
    words = math.ceil(total_bytes * 8 / 32)
    mem_sram, mem_dram = words * PJ["sram_read"], words * PJ["dram_read"]
    memory = mem_sram if fits else mem_dram
    dense_fits, dense_pj = _dense_baseline(layers, dense_bytes, budget)
    total = compute + memory
    return {
        "energy_nj": total * 1e-3,
        "fits_sram": None if budget is None else fits,
        "encoded_bytes": total_bytes,
        "figures_pj": dict(PJ),
        "layers": layers,
        "other_param_bytes": other_bytes,
        "totals": {
            "macs": sum(r["macs"] for r in layers),
            "stored_bytes": total_bytes,
            "weight_words_read": words,
            "compute_pj": compute,
            "memory_pj": memory,
            "energy_pj": total,
            "energy_uj": total * 1e-6,
            "energy_pj_if_sram": compute + mem_sram,
            "energy_pj_if_dram": compute + mem_dram,
        },
        "sram": {"budget_bytes": budget, "fits": fits, "memory": "sram" if fits else "dram"},
        "dense_fp32": {"stored_bytes": dense_bytes, "energy_pj": dense_pj, "fits": dense_fits},
        "energy_saving": dense_pj / total if total else math.inf,
        "size_ratio": dense_bytes / total_bytes if total_bytes else math.inf,
    }


def _dense_baseline(layers: list[dict[str, Any]], dense_bytes: int, budget: int | None):
    """``(fits the budget, energy pJ)`` of the dense float32 model: every MAC, every word."""
    fits = budget is not None and dense_bytes <= budget
    words = math.ceil(dense_bytes * 8 / 32)
    read = PJ["sram_read"] if fits else PJ["dram_read"]
    return fits, sum(r["dense_fp32_compute_pj"] for r in layers) + words * read


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    try:
        return compressible_layers(model)
    except UnsupportedLayerError:
        return []


def _weights_and_biases(module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The layer's effective weight tensors and its bias vectors (adapter layouts)."""
    weights, biases = [], []
    for t in layouts(module):
        tensor = getattr(module, t.tensor, None)
        if tensor is not None:
            (biases if t.bias else weights).append(tensor.detach())
    return weights, biases


def _layer_row(name: str, module: nn.Module, ops: OpCount, bits: float) -> dict[str, Any]:
    weights, biases = _weights_and_biases(module)
    n_weights = sum(w.numel() for w in weights)
    nnz = sum(int(torch.count_nonzero(w)) for w in weights)
    kind = "conv" if isinstance(module, nn.modules.conv._ConvNd) else "linear"
    stored = [stored_bits(w != 0, bits, INDEX_BITS[kind]) for w in weights]
    w_bits = sum(b for b, _ in stored)
    fmt = "sparse" if stored and all(f == "sparse" for _, f in stored) else "dense"
    n_bias = sum(b.numel() for b in biases)
    positions = max(ops.positions, 1)
    bias_adds = n_bias * positions
    quantized = bits < 32
    mac_pj = (PJ["int_mult"] + PJ["int_add"]) if quantized else (PJ["float_mult"] + PJ["float_add"])
    add_pj = PJ["int_add"] if quantized else PJ["float_add"]
    fp32_pj = (PJ["float_mult"] + PJ["float_add"]) * ops.dense
    return {
        "name": name,
        "type": layer_kind(module),
        "params": n_weights + n_bias,
        "weights": n_weights,
        "nonzeros": nnz,
        "sparsity": 1.0 - nnz / max(n_weights, 1),
        "bits_per_weight": float(bits),
        "format": fmt,
        "positions": positions,
        "macs": ops.nonzero,
        "flops": 2 * ops.nonzero + bias_adds,
        "stored_bytes": math.ceil(w_bits / 8) + 4 * n_bias,
        "dense_fp32_bytes": 4 * (n_weights + n_bias),
        "compute_pj": ops.nonzero * mac_pj + bias_adds * add_pj,
        "dense_fp32_compute_pj": fp32_pj + bias_adds * PJ["float_add"],
    }


def _bits_for(name: str, module: nn.Module, bits: BitsLike) -> float:
    if isinstance(bits, dict):
        if name in bits:
            return float(bits[name])
        bits = None
    if bits is not None:
        if not 0 < float(bits) <= 32:
            raise ConfigError(f"bits_per_weight must lie in (0, 32], got {bits}")
        return float(bits)
    for tensor in [t.tensor for t in layouts(module) if not t.bias]:
        for p in parametrizations_of(module, tensor):
            storage = getattr(p, "storage", None)
            if callable(storage):
                info = storage()
                if isinstance(info, dict) and info.get("bits_per_weight") is not None:
                    return float(info["bits_per_weight"])
    return 32.0


def _other_param_bytes(model: nn.Module) -> int:
    """float32 bytes of parameters outside the compressible layers' tensors (BatchNorm, ...)."""
    counted = set()
    for _, module in _layers(model):
        counted.update(id(t) for t in module.parameters())
    return 4 * sum(p.numel() for p in model.parameters() if id(p) not in counted)
