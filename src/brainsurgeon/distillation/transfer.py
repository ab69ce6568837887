"""Transfer sets (the inputs the student imitates the teacher on) and teacher-output caching.

``train``: the training split with its labels; ``val``: the held-out split (the student never
sees the training images); ``unlabeled``: the training inputs with their labels ignored;
``augmented``: training inputs with fresh Gaussian noise and random shifts of up to ``shift``
pixels every batch (so the teacher runs on each batch instead of being cached).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.augment import augment, shift_images
from ..data.core import DataBundle
from ..registry import Registry
from ..utils import module_device, preserved_modes

__all__ = [
    "TRANSFER_SETS",
    "TransferSet",
    "augment",
    "build_transfer_set",
    "shift_images",
    "teacher_outputs",
]

TRANSFER_SETS: Registry = Registry("transfer set")
TRANSFER_SETS.register("train", "the training split, with its labels")(("train", True))
TRANSFER_SETS.register("val", "the held-out validation split, with its labels")(("val", True))
TRANSFER_SETS.register("unlabeled", "training inputs, labels ignored")(("train", False))
TRANSFER_SETS.register("augmented", "training inputs + noise and small shifts, fresh each batch")(
    ("train", True)
)


@dataclass
class TransferSet:
    """Inputs ``x`` (N, ...), labels ``y`` (N,) or None, teacher logits (N, C) or None (live)."""

    kind: str
    x: torch.Tensor
    y: torch.Tensor | None
    teacher_logits: torch.Tensor | None

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "samples": int(self.x.shape[0]),
            "labels_used": self.y is not None,
            "teacher_outputs_cached": self.teacher_logits is not None,
        }


def build_transfer_set(
    kind: str, data: DataBundle, teacher: nn.Module, *, batch_size: int = 1024
) -> TransferSet:
    """Pick the inputs for ``kind`` and cache the teacher's logits when they are fixed."""
    split, labelled = TRANSFER_SETS.get(kind)
    dataset = data.split(split)
    cached = None if kind == "augmented" else teacher_outputs(teacher, dataset.x, batch_size)
    return TransferSet(kind, dataset.x, dataset.y if labelled else None, cached)


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The teacher's logits on ``x`` in eval mode (dropout off), on ``x``'s device."""
    device = module_device(teacher)
    with preserved_modes(teacher, "eval"):
        out = [
            teacher(x[i : i + batch_size].to(device)).to(x.device)
            for i in range(0, x.shape[0], batch_size)
        ]
    return torch.cat(out)
