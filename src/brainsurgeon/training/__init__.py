"""Training, fine-tuning and evaluation loops."""

from .config import TrainConfig
from .evaluation import describe, evaluate, headline
from .loop import cross_entropy_loss, fit, lp_penalty, model_loss, weight_tensors

__all__ = [
    "TrainConfig",
    "cross_entropy_loss",
    "describe",
    "evaluate",
    "fit",
    "headline",
    "lp_penalty",
    "model_loss",
    "weight_tensors",
]
