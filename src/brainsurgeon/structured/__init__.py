"""Structured pruning: units (neurons, channels, heads, layers), their coupled tensors, scores,
masks, merging and the surgery that makes a model physically smaller."""

from .groups import GRANULARITIES, Group, Slice, tensor_of
from .scores import (
    UNIT_CRITERIA,
    UnitCriterion,
    make_unit_criterion,
    register_unit_criterion,
    unit_scores,
)
from .unit_selection import mlp_groups, select_units

__all__ = [
    "GRANULARITIES",
    "UNIT_CRITERIA",
    "Group",
    "Slice",
    "UnitCriterion",
    "make_unit_criterion",
    "mlp_groups",
    "register_unit_criterion",
    "select_units",
    "tensor_of",
    "unit_scores",
]
