"""onnxruntime sessions for brainsurgeon models, and an ``nn.Module`` that runs one.

``onnx`` and ``onnxruntime`` are optional (``pip install brainsurgeon[deploy]``); nothing here
imports them before a function that needs them is called.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedLayerError

INPUT = "input"
OUTPUT = "output"
OPSET = 17


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or a :class:`ConfigError` naming the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            f"ONNX export and the onnx runtime need onnx and onnxruntime ({exc.name} is not "
            "installed); pip install brainsurgeon[deploy]"
        ) from None
    return onnx, onnxruntime


def onnx_bytes(model: nn.Module, example: torch.Tensor, *, batch_dynamic: bool = True) -> bytes:
    """``model`` (eval, float, baked) as an ONNX graph: input ``input`` (B, ...) and output
    ``output`` (B, ...); axis 0 is named ``batch`` and dynamic unless ``batch_dynamic=False``
    (then fixed to ``example``'s batch size). TorchScript-based exporter, opset 17."""
    require_onnx()
    if not isinstance(example, torch.Tensor):
        raise UnsupportedLayerError(
            "ONNX export takes models with one tensor input (B, ...), got an example of "
            f"type {type(example).__name__}"
        )
    tokens = not example.is_floating_point()
    if tokens and example.dtype != torch.int64:
        raise UnsupportedLayerError(
            f"ONNX export takes float inputs or int64 token ids (B, ...), got {example.dtype}"
        )
    axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if batch_dynamic else None
    if tokens and example.dim() >= 2:  # token ids: the sequence length varies too
        axes = axes or {INPUT: {}, OUTPUT: {}}
        axes[INPUT][example.dim() - 1] = "sequence"
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(
                model, (example,), buf, input_names=[INPUT], output_names=[OUTPUT],
                dynamic_axes=axes, opset_version=OPSET, dynamo=False,
            )  # fmt: skip
        except Exception as exc:  # the exporter raises many types for unsupported ops
            raise UnsupportedLayerError(
                f"torch.onnx.export could not export {type(model).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; export the "
                "dense run (--runtime dense) or report the layer"
            ) from None
    return buf.getvalue()


def make_session(model_bytes: bytes, *, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads, full graph optimization."""
    _, ort = require_onnx()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def run_session(session, x: torch.Tensor) -> torch.Tensor:
    """``session`` on ``x`` (B, ...) float32 (or int64 token ids) -> its first output."""
    x = x.detach().cpu()
    x = x if x.dtype == torch.int64 else x.float()
    (y, *_) = session.run(None, {INPUT: x.numpy()})
    return torch.from_numpy(y)


class OnnxModule(nn.Module):
    """An ``nn.Module`` whose forward runs an onnxruntime session (inference only).

    ``forward(x)``: ``x`` (B, ...) float32 on the CPU -> ``(B, *output_tail)``, through a
    plain ``session.run`` on the tensor's numpy view (no copy for a contiguous float32 CPU
    tensor). Binding buffers (``io_binding``) per call measured no faster: rebinding costs
    what it saves. Build it with :meth:`from_model` or ``to_inference(model, "onnx")``.
    """

    def __init__(self, model_bytes: bytes, output_tail: tuple[int, ...], *, threads: int = 1):
        super().__init__()
        self.model_bytes = model_bytes
        self.output_tail = tuple(int(d) for d in output_tail)
        self.threads = int(threads)
        self.session = make_session(model_bytes, threads=threads)

    @classmethod
    def from_model(
        cls, model: nn.Module, example: torch.Tensor, *, threads: int = 1, int8: str | None = None
    ) -> OnnxModule:
        """Export ``model`` (eval, baked) with ``example`` (B, ...); ``int8``: ``None`` (fp32),
        ``"dynamic"`` or ``"static"`` (quantized by :mod:`.quantize`, calibrated on
        ``example`` for static)."""
        with torch.no_grad():
            tail = tuple(model(example).shape[1:])
        data = onnx_bytes(model, example)
        if int8 is not None:
            from .quantize import quantize_int8

            data = quantize_int8(data, int8, calibration=example)
        return cls(data, tail, threads=threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or x.dtype != torch.float32 or x.device.type != "cpu":
            x = x.detach().to("cpu", torch.float32)
        return torch.from_numpy(self.session.run(None, {INPUT: x.numpy()})[0])

    def __deepcopy__(self, memo) -> OnnxModule:
        return OnnxModule(self.model_bytes, self.output_tail, threads=self.threads)

    def extra_repr(self) -> str:
        return f"onnx {len(self.model_bytes):,} bytes, output (B, {self.output_tail}), " + (
            f"{self.threads} thread(s)"
        )
