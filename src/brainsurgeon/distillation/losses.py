"""Distillation losses as pure functions of logits / features (batch means).

* Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network":
  ``a * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - a) * CE(z_s, y)``. The gradient
  of the soft term per sample is ``T^2 * (q - p) / T`` with ``q``, ``p`` the student's and the
  teacher's softened probabilities, so ``T^2`` keeps its scale comparable to the hard term.
* Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?": regress the teacher's logits,
  ``0.5 * ||z_s - z_t||^2``.
* Romero et al. 2015, "FitNets": hint loss ``0.5 * ||u_h - r(v_g)||^2`` between the teacher's
  hint-layer output ``u_h`` and a learned regressor ``r`` of the student's guided-layer output.

Without labels (``targets=None``) only the teacher term is used, whatever ``alpha``. The hard
term is cross entropy unless ``hard=`` gives the task's own loss ``(output, target) -> scalar``
(e.g. mean squared error for a regression student distilled by ``logit-mse``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..registry import Registry

HardLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: Registry = Registry("distillation loss")


def soft_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``mean_n KL(softmax(z_t / T) || softmax(z_s / T))``; logits (N, C)."""
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def _mix(
    teacher_term: torch.Tensor,
    student_logits: torch.Tensor,
    targets: torch.Tensor | None,
    alpha: float,
    hard_loss: HardLoss = F.cross_entropy,
) -> torch.Tensor:
    if targets is None or alpha == 1.0:
        return teacher_term
    hard = hard_loss(student_logits, targets)
    if alpha == 0.0:
        return hard
    return alpha * teacher_term + (1.0 - alpha) * hard


@LOSSES.register("kd", "Hinton KD: a T^2 KL(p_teacher(T) || p_student(T)) + (1 - a) CE")
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    hard: HardLoss = F.cross_entropy,
) -> torch.Tensor:
    """``a * T^2 * KL(p_t(T) || p_s(T)) + (1 - a) * CE(z_s, y)``; logits (N, C), targets (N,)."""
    soft = soft_kl(student_logits, teacher_logits, temperature) * temperature**2
    return _mix(soft, student_logits, targets, alpha, hard)


@LOSSES.register("logit-mse", "Ba & Caruana: a 0.5 ||z_s - z_t||^2 + (1 - a) CE")
def logit_mse_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    hard: HardLoss = F.cross_entropy,
) -> torch.Tensor:
    """``a * mean_n 0.5 ||z_s - z_t||^2 + (1 - a) * hard(z_s, y)`` (``temperature`` unused)."""
    diff = (student_logits - teacher_logits).reshape(student_logits.shape[0], -1)
    reg = 0.5 * diff.pow(2).sum(dim=1).mean()
    return _mix(reg, student_logits, targets, alpha, hard)


def hint_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """``mean_n 0.5 ||u_h - r(v_g)||^2``: regressed guided output and hint output, same shape."""
    return 0.5 * (hint - regressed).pow(2).flatten(1).sum(dim=1).mean()


# FitNets' second stage is KD; the registry entry names the two-stage method.
LOSSES.register("hint", "FitNets: stage 1 hint regression 0.5 ||u_h - r(v_g)||^2, stage 2 KD")(
    kd_loss
)
