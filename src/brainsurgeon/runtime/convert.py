"""``to_inference``: bake compression state into plain tensors and pick a runtime.

A pruned or quantized model keeps masks and quantizers as parametrizations that recompute
the weight at every forward (LeNet-300-100 at batch 1, measured by a user: dense 0.12 ms,
90%-pruned 0.36 ms, k-means 5-bit 0.93 ms). ``to_inference`` bakes them once
(:func:`brainsurgeon.state.make_permanent`), so the model runs as fast as a dense one, and
can then hand the layers to a runtime registered in :data:`RUNTIMES`:

* ``dense``: plain layers (zeros stored as zeros);
* ``sparse``: every replaceable ``nn.Linear`` whose weight sparsity is at least
  ``min_sparsity`` (default :data:`DEFAULT_MIN_SPARSITY` = 0.9, the measured crossover, see
  :mod:`brainsurgeon.runtime.sparse`) becomes a CSR :class:`SparseLinear`;
* ``int8``: torch dynamic int8 Linear layers (:func:`brainsurgeon.quantization.to_int8`);
* ``onnx`` / ``onnx-int8``: the model exported to ONNX and run by onnxruntime inside an
  ``nn.Module`` (:class:`brainsurgeon.deploy.OnnxModule`, fp32 or dynamic int8; needs the
  ``deploy`` extra). Lower per-call overhead than eager PyTorch: at batch 1 a shrunk
  LeNet-300-100 ran 2.5-3.0x faster than the dense one in it, 1.7x in eager PyTorch
  (``benchmarks/structured_widths.py``, on a loaded machine);
* ``native``: a chain of Linear / BatchNorm1d / activation layers compiled to C with the
  system compiler and called through ``ctypes`` (:class:`brainsurgeon.deploy.NativeModule`):
  little per-call cost, for batch-1 latency of small models (dense LeNet-300-100: 18 us
  against 46 us eager; ~5 us of it is the Python call, which a C caller does not pay).

Add a runtime with ``@register_runtime(name, description)`` on
``convert(model, min_sparsity) -> model`` (``model`` is already a baked, eval copy).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from ..state import make_permanent
from .sparse import SparseLinear

Convert = Callable[[nn.Module, "float | None"], nn.Module]
RUNTIMES: Registry[Convert] = Registry("runtime")

# Smallest weight sparsity at which SparseLinear beat dense at both batch 1 and 64 on the
# 784x300 and 4096x4096 layers measured (benchmarks/results/sparse_runtime.json).
DEFAULT_MIN_SPARSITY = 0.9


def register_runtime(name: str, description: str) -> Callable[[Convert], Convert]:
    """Decorator registering ``convert(model, min_sparsity) -> model`` as runtime ``name``."""
    return RUNTIMES.register(name, description)


def to_inference(
    model: nn.Module,
    runtime: str = "dense",
    *,
    min_sparsity: float | None = None,
    inplace: bool = False,
) -> nn.Module:
    """A model for inference: parametrizations baked, eval mode, no gradients, on ``runtime``.

    ``model`` is deep-copied unless ``inplace`` (its spec and edit records travel with it).
    ``min_sparsity`` (``sparse`` only): fraction of exact zeros in a Linear weight from
    which it is stored in CSR. The ``int8`` runtime always returns a new model.
    """
    convert = RUNTIMES.get(runtime)
    if min_sparsity is not None:
        if runtime != "sparse":
            raise ConfigError(
                f"min_sparsity applies to runtime='sparse' only, got runtime={runtime!r}; "
                "drop min_sparsity or use runtime='sparse'"
            )
        if not 0.0 <= float(min_sparsity) <= 1.0:
            raise ConfigError(f"min_sparsity must lie in [0, 1], got {min_sparsity}; e.g. 0.9")
    out = model if inplace else copy.deepcopy(model)
    make_permanent(out)
    out.eval()
    out.requires_grad_(False)
    return convert(out, min_sparsity)


@register_runtime("dense", "plain dense layers with the compression baked into the weights")
def _dense(model: nn.Module, min_sparsity: float | None) -> nn.Module:
    return model


@register_runtime("sparse", "nn.Linear layers above min_sparsity stored and run in CSR")
def _sparse(model: nn.Module, min_sparsity: float | None) -> nn.Module:
    threshold = DEFAULT_MIN_SPARSITY if min_sparsity is None else float(min_sparsity)
    for name in replaceable_linears(model):
        linear = model.get_submodule(name)
        if weight_sparsity(linear.weight) >= threshold:
            _set_submodule(model, name, SparseLinear.from_dense(linear))
    return model


@register_runtime("int8", "torch dynamic int8 nn.Linear layers (fbgemm / qnnpack kernels)")
def _int8(model: nn.Module, min_sparsity: float | None) -> nn.Module:
    from ..quantization.int8 import to_int8

    return to_int8(model)


@register_runtime("onnx", "the model exported to ONNX, run by onnxruntime (fp32, 1 thread)")
def _onnx(model: nn.Module, min_sparsity: float | None) -> nn.Module:
    return _onnx_module(model, None)


@register_runtime("onnx-int8", "the model exported to ONNX, dynamic int8 by onnxruntime")
def _onnx_int8(model: nn.Module, min_sparsity: float | None) -> nn.Module:
    return _onnx_module(model, "dynamic")


@register_runtime("native", "a chain model compiled to C (-O3 -march=native), called by ctypes")
def _native(model: nn.Module, min_sparsity: float | None) -> nn.Module:
    from ..deploy.native import NativeModule
    from ..structured.api import example_of

    example = example_of(model, None)
    if not example.is_floating_point():
        raise ConfigError("the native runtime takes float inputs; token models need 'onnx'")
    return NativeModule(model.cpu(), tuple(example.shape[1:]))


def _onnx_module(model: nn.Module, int8: str | None) -> nn.Module:
    from ..deploy import OnnxModule
    from ..structured.api import example_of

    example = example_of(model, None)
    return OnnxModule.from_model(model.cpu(), example, int8=int8)


def weight_sparsity(weight: torch.Tensor) -> float:
    """Fraction of exact zeros in ``weight``."""
    return 1.0 - int(torch.count_nonzero(weight)) / max(1, weight.numel())


def replaceable_linears(model: nn.Module) -> list[str]:
    """Names of the plain ``nn.Linear`` modules a runtime may swap out: not subclasses (e.g.
    attention's ``out_proj``, read as a tensor by ``MultiheadAttention``) and not inside a
    Transformer encoder/decoder layer, whose fused path reads ``linear.weight``."""
    fused = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    inside = [name for name, mod in model.named_modules() if isinstance(mod, fused)]
    return [
        name
        for name, mod in model.named_modules()
        if type(mod) is nn.Linear and name and not any(name.startswith(f"{p}.") for p in inside)
    ]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
