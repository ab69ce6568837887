"""brainsurgeon: make trained PyTorch networks smaller and faster without losing accuracy.

Public API (imported lazily so ``import brainsurgeon`` stays cheap). The verbs are pure:
model in, model out, a result back; :mod:`brainsurgeon.pipeline` adds round checkpoints,
``resume`` and run directories (what the ``brainsurgeon`` commands use)::

    >>> import tempfile
    >>> import brainsurgeon as bs
    >>> data = bs.data.load_data("digits", progress=False)
    >>> model = bs.build_model("mlp:64-32-10", data.input_shape, data.num_classes)
    >>> history = bs.fit(model, data, bs.TrainConfig(epochs=1), progress=False)
    >>> result = bs.prune(model, bs.PruneConfig(criterion="obd", amount=0.9), data, progress=False)
    >>> round(result.total_sparsity, 3)
    0.9
    >>> path = bs.save(model, tempfile.mkdtemp() + "/mlp", config={"data": data.spec})
    >>> restored = bs.load(path)
    >>> bs.evaluate(restored, data)["accuracy"] == bs.evaluate(model, data)["accuracy"]
    True

The same prune, saved round by round and resumable::

    >>> from brainsurgeon.pipeline import prune_run
    >>> again = bs.build_model("mlp:64-32-10", data.input_shape, data.num_classes)
    >>> config = bs.PruneConfig(amount=0.8, schedule="iterative", rounds=2)
    >>> out = tempfile.mkdtemp() + "/pruned"
    >>> [r["round"] for r in prune_run(again, config, data, out_dir=out, progress=False).rounds]
    [1, 2]
    >>> round(prune_run(again, config, data, out_dir=out, resume=True).total_sparsity, 3)
    0.8
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "save": "brainsurgeon.runs",
    "load": "brainsurgeon.runs",
    "load_run": "brainsurgeon.runs",
    "export": "brainsurgeon.container",
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
    "to_inference": "brainsurgeon.runtime",
}

_MODULES = (
    "data",
    "metrics",
    "models",
    "training",
    "pruning",
    "quantization",
    "curvature",
    "pipeline",
    "recipes",
    "runtime",
)

__all__ = sorted([*_API, "__version__", "data", "metrics", "pipeline"])


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"brainsurgeon.{name}")
    raise AttributeError(f"module 'brainsurgeon' has no attribute {name!r}")
