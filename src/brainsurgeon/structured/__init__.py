"""Structured pruning: units (neurons, channels, heads, layers), their coupled tensors, scores,
masks, merging and the surgery that makes a model physically smaller."""

from .attention import SlimMultiheadAttention
from .graph import find_groups
from .groups import GRANULARITIES, Group, Slice, tensor_of
from .masks import apply_unit_mask
from .rules import register_rule
from .surgery import find_dead_units, shrink

__all__ = [
    "GRANULARITIES",
    "Group",
    "SlimMultiheadAttention",
    "Slice",
    "apply_unit_mask",
    "find_dead_units",
    "find_groups",
    "register_rule",
    "shrink",
    "tensor_of",
]
