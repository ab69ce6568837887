"""The int8 CPU paths that ``benchmarks/int8_latency.py`` compares, each as ``x -> y``.

Every builder takes the float ``model``, an example batch ``x`` and a thread count and
returns a callable (or raises :class:`Skip` with the reason it cannot run here).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from brainsurgeon.quantization import to_int8


class Skip(Exception):
    """This variant cannot run here; the message says why."""


def torch_fp32(model: nn.Module, x: torch.Tensor, threads: int) -> Callable:
    return model


def torch_ao_int8(model: nn.Module, x: torch.Tensor, threads: int) -> Callable:
    return to_int8(model)


def _ort(int8: str | None, **options) -> Callable:
    def build(model: nn.Module, x: torch.Tensor, threads: int) -> Callable:
        try:
            from brainsurgeon.deploy import OnnxModule, onnx_bytes, quantize_int8
        except ImportError as exc:  # pragma: no cover - deploy extra missing
            raise Skip(f"onnxruntime missing: {exc}") from None
        with torch.no_grad():
            tail = tuple(model(x[:1]).shape[1:])
        data = onnx_bytes(model, x[:2])
        if int8 is not None:
            g = torch.Generator().manual_seed(1)  # calibration: 64 fresh samples like x
            calib = torch.randn((64, *x.shape[1:]), generator=g) * x.std() + x.mean()
            data = quantize_int8(data, int8, calibration=calib, **options)
        return OnnxModule(data, tail, threads=threads)

    return build


def torchao_int8(model: nn.Module, x: torch.Tensor, threads: int) -> Callable:
    """torchao's int8 dynamic-activation int8-weight config, eager (if torchao imports)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception as exc:
        raise Skip(
            f"torchao not importable ({type(exc).__name__}: {exc}); it is not installed in "
            "the venv: `pip download torchao --no-deps` and put the unpacked wheel on "
            "PYTHONPATH to include it"
        ) from None
    q = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(q, Int8DynamicActivationInt8WeightConfig())
    return q


VARIANTS: dict[str, tuple[str, Callable]] = {
    "torch-fp32": ("PyTorch eager fp32 (the reference)", torch_fp32),
    "torch-ao-int8": ("torch.ao dynamic int8 Linear (brainsurgeon's to_int8)", torch_ao_int8),
    "ort-fp32": ("onnxruntime fp32", _ort(None)),
    "ort-dynamic-s8-perchannel": (
        "onnxruntime dynamic int8, int8 weights per channel",
        _ort("dynamic", weight_type="qint8", per_channel=True),
    ),
    "ort-dynamic-s8-pertensor": (
        "onnxruntime dynamic int8, int8 weights per tensor",
        _ort("dynamic", weight_type="qint8", per_channel=False),
    ),
    "ort-dynamic-u8-perchannel": (
        "onnxruntime dynamic int8, uint8 weights per channel",
        _ort("dynamic", weight_type="quint8", per_channel=True),
    ),
    "ort-static-qdq-s8s8": (
        "onnxruntime static QDQ, int8 activations and weights, float Gemm outputs",
        _ort("static", activation_type="qint8", per_channel=True),
    ),
    "ort-static-qdq-u8s8": (
        "onnxruntime static QDQ, uint8 activations, int8 weights, float Gemm outputs",
        _ort("static", activation_type="quint8", per_channel=True),
    ),
    "torchao-int8": ("torchao Int8DynamicActivationInt8WeightConfig, eager", torchao_int8),
}


def median_ms(fn: Callable, x: torch.Tensor, budget_s: float) -> float:
    """Median ms of ``fn(x)`` over calls filling about ``budget_s`` (at least 3)."""
    with torch.inference_mode():
        fn(x)
        start = time.perf_counter()
        fn(x)
        once = time.perf_counter() - start
        reps = max(3, int(budget_s / max(once, 1e-6)))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2]
