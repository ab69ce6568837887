"""Losses by name or callable: one ``LossFn(output, target) -> scalar batch mean`` everywhere.

Every verb (``saliency``, ``prune``, ``quantize``, ``factorize``, ``distill``, the curvature
statistics, fine-tuning and ``evaluate``) takes ``loss=``: a registered name
(``"cross_entropy"``, ``"mse"``, ``"l1"``) or any callable ``(output, target) -> scalar``.
The curvature code assumes the loss is the batch *mean* of per-sample losses ``L_n``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, NumericalError
from .registry import Registry

LossFn = Callable[[Tensor, Tensor], Tensor]
LossLike = str | LossFn | None

#: name -> (loss, task): the task ("classification" | "regression") picks evaluate's metrics.
LOSSES: Registry[tuple[LossFn, str]] = Registry("loss")


def _as_target(output: Tensor, target: Tensor) -> Tensor:
    """Regression targets of shape (n,) against outputs (n, 1) are the same thing."""
    if target.shape != output.shape and target.numel() == output.numel():
        target = target.reshape(output.shape)
    if target.shape != output.shape:
        raise ConfigError(
            f"a regression loss (mse, l1) needs one target per output: the model gives "
            f"{tuple(output.shape)}, the targets are {tuple(target.shape)}; for class labels "
            "use the cross_entropy loss"
        )
    return target.to(output.dtype)


def mse(output: Tensor, target: Tensor) -> Tensor:
    """``mean_n mean_c (z_nc - y_nc)^2`` (``F.mse_loss``, targets reshaped to the outputs)."""
    return F.mse_loss(output, _as_target(output, target))


def l1(output: Tensor, target: Tensor) -> Tensor:
    """``mean_n mean_c |z_nc - y_nc|``."""
    return F.l1_loss(output, _as_target(output, target))


def cosine(output: Tensor, target: Tensor) -> Tensor:
    """``mean_n (1 - cos(z_n, y_n))``: the self-distillation loss of an embedding model
    (targets are the original model's embeddings; no labels needed)."""
    target = _as_target(output, target)
    return (1.0 - F.cosine_similarity(output, target, dim=-1, eps=1e-12)).mean()


LOSSES.register("cross_entropy", "softmax cross entropy on logits; integer class targets")(
    (F.cross_entropy, "classification")
)
LOSSES.register("mse", "mean squared error (regression); targets reshaped to the outputs")(
    (mse, "regression")
)
LOSSES.register("l1", "mean absolute error (regression)")((l1, "regression"))
LOSSES.register(
    "cosine", "1 - cosine similarity to target embeddings (an embedding model's distillation)"
)((cosine, "embedding"))


def resolve_loss(loss: LossLike = None) -> LossFn:
    """The loss function for ``loss`` (a name, a callable, or None = cross entropy)."""
    if loss is None:
        return F.cross_entropy
    if isinstance(loss, str):
        return LOSSES.get(loss)[0]
    if callable(loss):
        return loss
    raise ConfigError(
        f"loss must be a name ({', '.join(LOSSES.names())}) or a callable "
        f"(output, target) -> scalar, got {type(loss).__name__}"
    )


def task_of(loss: LossLike = None) -> str:
    """``"classification"``, ``"regression"``, ``"embedding"`` or ``"custom"`` (a callable)."""
    fn = resolve_loss(loss)
    for name in LOSSES:
        registered, task = LOSSES.get(name)
        if fn is registered:
            return task
    return "custom"


def loss_name(loss: LossLike = None) -> str:
    """The registered name of ``loss``, or the callable's qualified name."""
    fn = resolve_loss(loss)
    for name in LOSSES:
        if LOSSES.get(name)[0] is fn:
            return name
    return getattr(fn, "__qualname__", type(fn).__name__)


def checked(loss_fn: LossFn, output: Tensor, target: Tensor, where: str = "a batch") -> Tensor:
    """``loss_fn(output, target)``, refused unless it is a finite scalar tensor.

    ``where`` names the batch (e.g. ``"batch 3 of the calibration data"``) in the error.
    """
    value = loss_fn(output, target)
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ConfigError(
            f"the loss returned {shape} on {where}; a loss must return one scalar tensor "
            "(the batch mean), e.g. reduce it with .mean()"
        )
    if not bool(torch.isfinite(value.detach()).all()):
        raise NumericalError(
            f"the loss is {value.detach().item()} on {where}; check the inputs' "
            "normalisation, the targets and the weights (or lower the learning rate)"
        )
    return value.reshape(())


__all__ = ["LOSSES", "LossFn", "LossLike", "checked", "loss_name", "resolve_loss", "task_of"]
