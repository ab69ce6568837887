"""Experiments that turn the library into an instrument: criteria comparison, the OBD-SD
study, per-layer sensitivity. Each writes JSON (with seed and environment) and plots."""

from .common import ExperimentDir, mean_std
from .compare import CompareConfig, compare

__all__ = ["CompareConfig", "ExperimentDir", "compare", "mean_std"]
