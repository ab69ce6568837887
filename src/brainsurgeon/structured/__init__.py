"""Structured pruning: units (neurons, channels, heads, layers), their coupled tensors, scores,
masks, merging and the surgery that makes a model physically smaller."""

from .groups import GRANULARITIES, Group, Slice, tensor_of

__all__ = ["GRANULARITIES", "Group", "Slice", "tensor_of"]
