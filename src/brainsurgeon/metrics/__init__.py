"""Honest measurement: parameters, nonzeros, bytes, FLOPs, latency, accuracy (and energy)."""

from ..training.loop import evaluate
from .counting import LayerStats, count_layers, count_macs, effective_tensors, summarize
from .latency import measure_latency

__all__ = [
    "LayerStats",
    "count_layers",
    "count_macs",
    "effective_tensors",
    "evaluate",
    "measure_latency",
    "summarize",
]
