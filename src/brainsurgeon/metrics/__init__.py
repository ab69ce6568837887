"""Honest measurement: parameters, nonzeros, bytes, FLOPs, latency, accuracy (and energy)."""

from ..training.evaluation import evaluate
from .counting import LayerStats, count_layers, count_macs, effective_tensors, summarize
from .inputs import example_input
from .inspection import inspect_model
from .latency import measure_latency
from .ops import MAC_RULES, OpCount, count_ops, register_macs

__all__ = [
    "MAC_RULES",
    "LayerStats",
    "OpCount",
    "count_layers",
    "count_macs",
    "count_ops",
    "effective_tensors",
    "evaluate",
    "example_input",
    "inspect_model",
    "measure_latency",
    "register_macs",
    "summarize",
]
