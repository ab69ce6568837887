"""Pruning engine: criteria score, selectors choose, masks apply, schedules repeat.

::

    from brainsurgeon.pruning import PruneConfig, prune, saliency
    scores = saliency(model, "obd", data)                  # {"fc1.weight": damage, ...}
    result = prune(model, PruneConfig(criterion="obs", amount=0.9), data)

``prune`` writes no files; :func:`brainsurgeon.pipeline.prune_run` adds round checkpoints,
``resume`` and the run directory.
"""

from .api import PrunePlan, PruneResult, make_permanent, plan_prune, prune, saliency
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
    "PrunePlan",
    "PruneResult",
    "SaliencyContext",
    "find_mask",
    "make_criterion",
    "make_permanent",
    "masks_of",
    "plan_prune",
    "prune",
    "register_criterion",
    "saliency",
    "set_mask",
]
