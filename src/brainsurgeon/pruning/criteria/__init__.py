"""Saliency criteria, one file each, one registry (``CRITERIA``)."""

import importlib
import pkgutil

from .base import (
    CRITERIA,
    CompensatingCriterion,
    Criterion,
    SaliencyContext,
    Solver,
    make_criterion,
    register_criterion,
)

# Import every criterion module so each registers itself.
for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "CRITERIA",
    "CompensatingCriterion",
    "Criterion",
    "Solver",
    "SaliencyContext",
    "make_criterion",
    "register_criterion",
]
