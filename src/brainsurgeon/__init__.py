"""brainsurgeon: make trained PyTorch networks smaller and faster without losing accuracy.

Public API (imported lazily so ``import brainsurgeon`` stays cheap)::

    import brainsurgeon as bs
    data = bs.data.load("digits")
    model = bs.build_model("lenet300", data.input_shape, data.num_classes)
    bs.fit(model, data, bs.TrainConfig(epochs=5))
    bs.prune(model, bs.PruneConfig(criterion="obd", amount=0.9), data=data)
    bs.save(model, "runs/lenet", data=data)
    model = bs.load("runs/lenet")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "save": "brainsurgeon.runs",
    "load": "brainsurgeon.runs",
    "load_run": "brainsurgeon.runs",
    "Run": "brainsurgeon.runs",
    "build_model": "brainsurgeon.models",
    "TrainConfig": "brainsurgeon.training",
    "fit": "brainsurgeon.training",
    "evaluate": "brainsurgeon.training",
    "make_permanent": "brainsurgeon.state",
    "saliency": "brainsurgeon.pruning",
    "prune": "brainsurgeon.pruning",
    "PruneConfig": "brainsurgeon.pruning",
    "quantize": "brainsurgeon.quantization",
    "quant_config": "brainsurgeon.quantization",
    "distill": "brainsurgeon.distillation",
    "DistillConfig": "brainsurgeon.distillation",
    "factorize": "brainsurgeon.factorization",
    "FactorizeConfig": "brainsurgeon.factorization",
}

__all__ = sorted([*_API, "__version__", "data", "metrics"])


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in ("data", "metrics", "models", "training", "pruning", "quantization", "curvature"):
        return importlib.import_module(f"brainsurgeon.{name}")
    raise AttributeError(f"module 'brainsurgeon' has no attribute {name!r}")
