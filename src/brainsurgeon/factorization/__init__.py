"""Low-rank factorization: truncated SVD of Linear and Conv2d weights (TECHNIQUES.md section 8).

Importing this package registers the ``factorize`` architecture edit, which
``brainsurgeon.load`` needs to rebuild a factorized run.
"""

from .api import FactorizeConfig, FactorizeResult, LayerPlan, factorize, plan
from .layers import LowRankConv2d, LowRankLinear, apply_factorize
from .svd import (
    SVD,
    check_rank,
    compression_rate,
    max_shrinking_rank,
    rank_for_energy,
    rank_for_rate,
)

__all__ = [
    "SVD",
    "FactorizeConfig",
    "FactorizeResult",
    "LayerPlan",
    "LowRankConv2d",
    "LowRankLinear",
    "apply_factorize",
    "check_rank",
    "compression_rate",
    "factorize",
    "max_shrinking_rank",
    "plan",
    "rank_for_energy",
    "rank_for_rate",
]
