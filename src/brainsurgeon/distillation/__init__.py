"""Knowledge distillation: Hinton KD, logit regression, FitNets hints (TECHNIQUES.md section 7)."""

from .api import DistillConfig, DistillResult, check_compatible, distill
from .losses import LOSSES, hint_loss, kd_loss, logit_mse_loss, soft_kl
from .transfer import TRANSFER_SETS, TransferSet, augment, build_transfer_set, shift_images

__all__ = [
    "LOSSES",
    "TRANSFER_SETS",
    "DistillConfig",
    "DistillResult",
    "TransferSet",
    "augment",
    "build_transfer_set",
    "check_compatible",
    "distill",
    "hint_loss",
    "kd_loss",
    "logit_mse_loss",
    "shift_images",
    "soft_kl",
]
