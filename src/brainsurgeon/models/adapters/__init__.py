"""Model adapters: the one place that knows a model family.

* :mod:`.tensors`: which tensors are compressible and their layout (the list of layer types);
* :mod:`brainsurgeon.losses`: the loss on a batch, by name or callable.
"""

from .tensors import (
    LAYOUTS,
    Targets,
    TensorLayout,
    compressible,
    compressible_layers,
    layer_kind,
    layout_of,
    layouts,
    left_dense,
    register_layout,
    supported_types,
)

__all__ = [
    "LAYOUTS",
    "Targets",
    "TensorLayout",
    "compressible",
    "compressible_layers",
    "layer_kind",
    "layout_of",
    "layouts",
    "left_dense",
    "register_layout",
    "supported_types",
]
