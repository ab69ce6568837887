"""Structured pruning: units (neurons, channels, heads, layers), their coupled tensors, scores,
masks, merging and the surgery that makes a model physically smaller."""

from .attention import SlimMultiheadAttention
from .blocks import Block, block_damage, drop_blocks, find_blocks
from .graph import find_groups
from .groups import GRANULARITIES, Group, Slice, tensor_of
from .masks import apply_unit_mask
from .merging import MergeResult, merge, prune_units
from .rules import register_rule
from .scores import (
    UNIT_CRITERIA,
    UnitCriterion,
    make_unit_criterion,
    register_unit_criterion,
    unit_scores,
)
from .surgery import find_dead_units, shrink
from .unit_selection import mlp_groups, select_units

__all__ = [
    "GRANULARITIES",
    "Block",
    "block_damage",
    "drop_blocks",
    "find_blocks",
    "UNIT_CRITERIA",
    "Group",
    "MergeResult",
    "Slice",
    "SlimMultiheadAttention",
    "UnitCriterion",
    "apply_unit_mask",
    "find_dead_units",
    "find_groups",
    "make_unit_criterion",
    "merge",
    "mlp_groups",
    "prune_units",
    "register_rule",
    "register_unit_criterion",
    "select_units",
    "shrink",
    "tensor_of",
    "unit_scores",
]
