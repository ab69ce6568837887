"""int8 ONNX graphs by onnxruntime's quantization tools: dynamic and static (QDQ).

* ``dynamic``: int8 weights (``weight_type``, per output channel if ``per_channel``),
  activations quantized to uint8 per tensor on the fly at every call (``MatMulInteger`` /
  ``DynamicQuantizeMatMul``); no calibration data.
* ``static``: QuantizeLinear/DequantizeLinear pairs around each MatMul/Gemm/Conv with
  activation scales fixed from ``calibration`` (min-max over the samples), which
  onnxruntime fuses into ``QGemm`` / ``QLinearConv`` kernels; needs representative inputs.

Which one is faster and how exact each is was measured on a 4096-4096-4096 MLP and
LeNet-300-100 (``benchmarks/int8_latency.py``); :data:`DEFAULT_INT8` is the winner there:
on the MLP at batch 64, dynamic int8 with per-channel int8 weights ran 8.0x (1 thread) and
8.2x (2 threads) faster than PyTorch fp32 at 1.1% relative error, against 4.7x / 3.2x for
torch.ao dynamic int8 and 8.2x / 6.0x for static QDQ (shared, loaded machine: re-measure).
Weights as uint8 were slow (1.8x); static QDQ clips activations beyond the calibrated range
(LeNet-300-100: 3.4% relative error against dynamic's 1.2%).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, UnsupportedLayerError
from .session import INPUT, require_onnx

MODES = ("dynamic", "static")
DEFAULT_INT8 = "dynamic"
TYPES = ("qint8", "quint8")
_FLOAT_OUTPUTS = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}


def quantize_int8(
    model_bytes: bytes,
    mode: str = DEFAULT_INT8,
    *,
    calibration: torch.Tensor | None = None,
    weight_type: str = "qint8",
    activation_type: str = "qint8",
    per_channel: bool = True,
    calibration_batch: int = 32,
    quantize_outputs: bool = False,
) -> bytes:
    """The float ONNX graph ``model_bytes`` with int8 MatMul/Gemm (and Conv for static).

    ``calibration`` (N, ...) float inputs: required for ``static`` (N >= 1; a few hundred
    samples of the training data are typical). ``activation_type`` applies to static only
    (dynamic always quantizes activations to uint8). ``calibration_batch``: the batch
    size calibration runs at (a fixed-batch graph's size). ``quantize_outputs`` (static):
    also quantize MatMul/Gemm outputs to the calibrated range; off by default, since logits
    beyond the calibration range are then clipped (LeNet-300-100: 20% max error vs 0.5%).
    """
    onnx, _ = require_onnx()
    from onnxruntime import quantization as q

    if mode not in MODES:
        raise ConfigError(f"int8 mode must be one of {', '.join(MODES)}, got {mode!r}")
    for name, value in (("weight_type", weight_type), ("activation_type", activation_type)):
        if value not in TYPES:
            raise ConfigError(f"{name} must be one of {', '.join(TYPES)}, got {value!r}")
    wtype = q.QuantType.QInt8 if weight_type == "qint8" else q.QuantType.QUInt8
    atype = q.QuantType.QInt8 if activation_type == "qint8" else q.QuantType.QUInt8
    with tempfile.TemporaryDirectory(prefix="bs-int8-") as tmp, _quiet():
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model_bytes)
        if mode == "static" and (calibration is None or len(calibration) == 0):
            raise ConfigError(
                "static int8 needs calibration inputs (N, ...); pass calibration= or use "
                "mode='dynamic'"
            )
        try:
            if mode == "dynamic":
                q.quantize_dynamic(src, dst, per_channel=per_channel, weight_type=wtype)
            else:
                q.quantize_static(
                    src, dst, _Reader(calibration, calibration_batch),
                    quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
                    weight_type=wtype, activation_type=atype,
                    extra_options=None if quantize_outputs else _FLOAT_OUTPUTS,
                )  # fmt: skip
        except Exception as exc:  # onnxruntime raises its own types for graphs it refuses
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UnsupportedLayerError(
                f"onnxruntime could not quantize the graph ({mode}): {first}; export it with "
                "--runtime dense"
            ) from None
        return onnx.load(dst).SerializeToString()


@contextlib.contextmanager
def _quiet():
    """Silence the quantizer's "consider pre-processing" notices on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a tensor, in whole batches."""

    def __init__(self, x: torch.Tensor, batch: int = 32):
        arr = x.detach().cpu().float().numpy()
        if len(arr) < batch:  # one short batch (fine for a dynamic batch axis)
            batch = len(arr)
        n = len(arr) - len(arr) % batch  # whole batches only (a fixed batch axis needs them)
        self._batches = iter([arr[i : i + batch] for i in range(0, n, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(self._batches, None)
        return None if nxt is None else {INPUT: nxt}
