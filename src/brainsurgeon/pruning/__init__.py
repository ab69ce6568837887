"""Pruning engine: criteria score, selectors choose, masks apply, schedules repeat.

::

    from brainsurgeon.pruning import PruneConfig, prune, saliency
    scores = saliency(model, "obd", data)                  # {"fc1.weight": damage, ...}
    result = prune(model, PruneConfig(criterion="obs", amount=0.9), data)
"""

from .api import PruneResult, make_permanent, prune, saliency
from .config import PruneConfig
from .criteria import CRITERIA, Criterion, SaliencyContext, make_criterion, register_criterion
from .masks import Mask, find_mask, masks_of, set_mask
from .schedules import SCHEDULES
from .selection import SELECTORS

__all__ = [
    "CRITERIA",
    "SCHEDULES",
    "SELECTORS",
    "Criterion",
    "Mask",
    "PruneConfig",
    "PruneResult",
    "SaliencyContext",
    "find_mask",
    "make_criterion",
    "make_permanent",
    "masks_of",
    "prune",
    "register_criterion",
    "saliency",
    "set_mask",
]
