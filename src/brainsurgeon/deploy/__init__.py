"""Deployment: compressed models as ONNX graphs that onnxruntime runs (fp32 or int8).

>>> result = export_onnx("runs/lenet300-shrunk", "lenet.onnx")            # doctest: +SKIP
>>> fast = to_inference(model, "onnx")   # an nn.Module running onnxruntime  # doctest: +SKIP

Needs the optional ``deploy`` extra (``pip install brainsurgeon[deploy]``: onnx, onnxruntime);
the functions import them when called and name the extra when they are missing.
The C runtime (:func:`export_c`, :class:`NativeModule`) needs only a C compiler.
"""

from .native import CExport, NativeModule, export_c
from .onnx import FLOAT_TOLERANCE, INT8_TOLERANCE, ONNX_RUNTIMES, OnnxExport, compare, export_onnx
from .quantize import DEFAULT_INT8, quantize_int8
from .session import OnnxModule, make_session, onnx_bytes, require_onnx

__all__ = [
    "CExport",
    "DEFAULT_INT8",
    "FLOAT_TOLERANCE",
    "INT8_TOLERANCE",
    "ONNX_RUNTIMES",
    "OnnxExport",
    "NativeModule",
    "OnnxModule",
    "compare",
    "export_c",
    "export_onnx",
    "make_session",
    "onnx_bytes",
    "quantize_int8",
    "require_onnx",
]
