"""Quantization and weight sharing: binary, ternary, uniform n-bit, k-means, product, residual,
second-order (GPTQ), quantization-aware training, real int8 execution.

One config type per method, one entry point (torchao's ``quantize_(model, config)``)::

    from brainsurgeon.quantization import KMeansConfig, quant_config, quantize
    result = quantize(model, KMeansConfig(bits=5, finetune_epochs=2), data, loss="cross_entropy")
    result = quantize(model, quant_config("uniform", bits=4, exclude=("fc3",)))
    result.storage["total"]["bits_per_weight"]

The tensors come from the adapter's table (Linear, Conv, LSTM/GRU, attention projections,
embeddings; ``layers`` / ``exclude`` globs). State lives in parametrizations on each tensor
(see :mod:`.base`); ``QUANTIZERS`` lists the methods (name -> config type and handler);
:func:`.accounting.report` gives bytes per tensor; :mod:`.int8` runs Linear layers on int8
kernels.
"""

from . import methods  # noqa: F401 (registers every method)
from .accounting import report
from .api import QuantResult, config_from_dict, plan, quant_config, quantize
from .base import QuantParametrization
from .config import QuantBase
from .int8 import compare_latency, to_int8
from .methods.binary import BinaryConfig, BinaryQuant
from .methods.gptq import GPTQConfig
from .methods.kmeans import KMeansConfig, KMeansQuant
from .methods.product import ProductConfig, ProductQuant
from .methods.residual import ResidualConfig, ResidualQuant
from .methods.ternary import TernaryConfig, TernaryQuant
from .methods.uniform import UniformConfig, UniformQuant
from .registry import DEFAULT_METHOD, QUANTIZERS, LayerPlan, Quantizer, QuantMethod

__all__ = [
    "DEFAULT_METHOD",
    "QUANTIZERS",
    "BinaryConfig",
    "BinaryQuant",
    "GPTQConfig",
    "KMeansConfig",
    "KMeansQuant",
    "LayerPlan",
    "ProductConfig",
    "ProductQuant",
    "QuantBase",
    "QuantMethod",
    "QuantParametrization",
    "QuantResult",
    "Quantizer",
    "ResidualConfig",
    "ResidualQuant",
    "TernaryConfig",
    "TernaryQuant",
    "UniformConfig",
    "UniformQuant",
    "compare_latency",
    "config_from_dict",
    "plan",
    "quant_config",
    "quantize",
    "report",
    "to_int8",
]
