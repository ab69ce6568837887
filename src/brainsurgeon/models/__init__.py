"""Model builders (``lenet300``, ``lenet5``, ``mlp:...``, user factories)."""

from .builders import MLP, MODELS, LeNet5, build_from_spec, build_model, model_spec, parse_mlp

__all__ = ["MLP", "MODELS", "LeNet5", "build_from_spec", "build_model", "model_spec", "parse_mlp"]
