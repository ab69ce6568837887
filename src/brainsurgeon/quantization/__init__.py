"""Quantization and weight sharing: binary, ternary, uniform n-bit, k-means, product, residual,
second-order (GPTQ), quantization-aware training, real int8 execution.

::

    from brainsurgeon.quantization import QuantConfig, quantize
    result = quantize(model, QuantConfig(method="kmeans", bits=5, finetune_epochs=2), data)
    result.storage["total"]["bits_per_weight"]

State lives in parametrizations on ``module.weight`` (see :mod:`.base`); ``QUANTIZERS``
lists the methods; :func:`.accounting.report` gives bytes per layer; :mod:`.int8` runs
Linear layers on int8 kernels.
"""

from . import binary, gptq, kmeans, product, residual, ternary, uniform  # noqa: F401 (register)
from .accounting import report
from .api import QuantResult, plan, quantize
from .base import QuantParametrization
from .binary import BinaryQuant
from .config import QuantConfig
from .int8 import compare_latency, to_int8
from .kmeans import KMeansQuant
from .product import ProductQuant
from .registry import QUANTIZERS, LayerPlan, Quantizer
from .residual import ResidualQuant
from .ternary import TernaryQuant
from .uniform import UniformQuant

__all__ = [
    "QUANTIZERS",
    "BinaryQuant",
    "KMeansQuant",
    "LayerPlan",
    "ProductQuant",
    "QuantConfig",
    "QuantParametrization",
    "QuantResult",
    "Quantizer",
    "ResidualQuant",
    "TernaryQuant",
    "UniformQuant",
    "compare_latency",
    "plan",
    "quantize",
    "report",
    "to_int8",
]
