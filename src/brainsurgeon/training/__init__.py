"""Training, fine-tuning and evaluation loops."""

from .config import TrainConfig
from .loop import cross_entropy_loss, evaluate, fit, lp_penalty, weight_tensors

__all__ = ["TrainConfig", "cross_entropy_loss", "evaluate", "fit", "lp_penalty", "weight_tensors"]
