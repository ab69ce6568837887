"""Model builders (``lenet300``, ``lenet5``, ``mlp:...``, user factories)."""

from .builders import (
    DEFAULT_SGD_LR,
    MLP,
    MODELS,
    LeNet5,
    build_from_spec,
    build_model,
    model_spec,
    parse_mlp,
)

__all__ = [
    "DEFAULT_SGD_LR",
    "MLP",
    "MODELS",
    "LeNet5",
    "build_from_spec",
    "build_model",
    "model_spec",
    "parse_mlp",
]
