"""Real int8 execution of Linear layers on the framework's kernels, with measured latency.

``to_int8`` converts a copy of the model with ``torch.ao.quantization.quantize_dynamic``:
int8 weights (per-tensor scale), activations quantized on the fly per batch, int8 GEMM by
fbgemm / x86 (or qnnpack on ARM). Conv layers stay float. This is an explicit deployment
conversion: the result is for inference only and is not a run directory. Whether it is
faster is measured (``compare_latency``), never assumed: at batch 1 on small layers the
quantize / dequantize overhead can make it slower than fp32.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from ..errors import UnsupportedLayerError
from ..models.adapters import compressible
from ..state import make_permanent


def to_int8(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` (parametrizations baked in) with dynamic int8 Linear layers.

    Other compressible tensors (conv, LSTM/GRU, attention, embeddings, the Linear layers
    inside ``nn.TransformerEncoderLayer``/``DecoderLayer``, whose fused inference path needs
    float tensors) stay float; a warning names them.
    """
    m = make_permanent(copy.deepcopy(model)).cpu().eval()
    names = _int8_linears(m)
    if not names:
        raise UnsupportedLayerError(
            "int8 execution covers nn.Linear layers only and this model has none; "
            "conv layers run in float (use --method uniform --bits 8 to simulate int8)"
        )
    chosen = {f"{name}.weight" for name in names}
    left = [name for name in compressible(m) if name not in chosen]
    if left:
        warnings.warn(
            f"int8 execution covers nn.Linear layers only; {len(left)} tensor(s) stay in float: "
            f"{', '.join(left)} (quantize them with --method uniform --bits 8 to simulate int8)",
            stacklevel=2,
        )
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated but still works
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(m, set(names), dtype=torch.qint8)


def _int8_linears(model: nn.Module) -> list[str]:
    """Names of the nn.Linear modules dynamic int8 can replace: not inside a Transformer
    encoder/decoder layer, whose fused inference path reads ``linear.weight`` as a tensor."""
    fused = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    inside = [name for name, mod in model.named_modules() if isinstance(mod, fused)]
    return [
        name
        for name, mod in model.named_modules()
        if type(mod) is nn.Linear and not any(name.startswith(f"{p}.") for p in inside)
    ]


def latency(model: nn.Module, x: torch.Tensor, *, min_run_time: float = 1.0) -> dict[str, float]:
    """Median / IQR seconds of ``model(x)`` under ``torch.utils.benchmark`` (no grad)."""
    timer = benchmark.Timer(
        stmt="with torch.no_grad(): model(x)",
        globals={"model": model, "x": x, "torch": torch},
        num_threads=torch.get_num_threads(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = timer.blocked_autorange(min_run_time=min_run_time)
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times)}


def compare_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 64),
    min_run_time: float = 1.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """fp32 vs int8 latency per batch size: ``[{"batch", "fp32_ms", "int8_ms", "speedup", ...}]``.

    ``speedup = fp32 / int8`` (below 1 means int8 is slower). ``max_abs_diff`` compares outputs.
    """
    fp32 = make_permanent(copy.deepcopy(model)).cpu().eval()
    int8 = to_int8(fp32)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, *input_shape, generator=g)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            diff = (fp32(x) - int8(x)).abs().max().item()
        a = latency(fp32, x, min_run_time=min_run_time)
        b = latency(int8, x, min_run_time=min_run_time)
        rows.append(
            {
                "batch": batch,
                "fp32_ms": 1e3 * a["median_s"],
                "int8_ms": 1e3 * b["median_s"],
                "fp32_iqr_ms": 1e3 * a["iqr_s"],
                "int8_iqr_ms": 1e3 * b["iqr_s"],
                "speedup": a["median_s"] / b["median_s"],
                "max_abs_diff": diff,
            }
        )
    return rows
