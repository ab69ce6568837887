"""In-memory datasets: tensors, batching, splits. Small data sets live wholly in memory."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import DataError


@dataclass
class Dataset:
    """Inputs ``x`` (N, ...) and targets ``y`` (N, ...).

    Classification: ``x`` (N, C, H, W) float32, normalised, and labels ``y`` (N,) int64.
    Regression: float targets ``y`` (N,) or (N, D). Inputs may also be integer token ids
    (N, T) for a model that starts with an ``nn.Embedding``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise DataError(
                f"a Dataset holds two tensors, got x: {type(self.x).__name__}, "
                f"y: {type(self.y).__name__}; wrap arrays with torch.as_tensor"
            )
        if self.x.dim() == 0 or self.y.dim() == 0:
            raise DataError("inputs and targets need a leading sample axis (N, ...)")
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"inputs have {self.x.shape[0]} samples but labels have {self.y.shape[0]}"
            )
        if self.y.is_floating_point() and not bool(torch.isfinite(self.y).all()):
            raise DataError("the float targets contain NaN or infinite values; clean them first")

    @property
    def task(self) -> str:
        """``"classification"`` for integer labels, ``"regression"`` for float targets."""
        return "regression" if self.y.is_floating_point() else "classification"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(
        self,
        batch_size: int = 256,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches, optionally shuffled by ``generator``, moved to ``device``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = self.x[idx], self.y[idx]
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            yield x, y

    def subset(self, n: int, *, seed: int = 0) -> Dataset:
        """A seeded random subset of ``n`` samples (all of them if ``n >= len``)."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n]
        return Dataset(self.x[idx], self.y[idx])

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.x.to(device), self.y.to(device))


@dataclass
class DataBundle:
    """Train/val/test splits plus what a model needs to know about them."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    normalization: dict[str, float]
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def split(self, name: str) -> Dataset:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; valid: train, val, test")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


DataLike = Dataset | DataBundle | tuple


def as_dataset(data: DataLike, split: str = "train") -> Dataset:
    """Accept a :class:`Dataset`, a :class:`DataBundle` (takes ``split``) or an ``(x, y)`` tuple.

    A tuple's tensors (or arrays) keep their integer dtypes (labels, token ids); float64
    inputs or targets become float32, the dtype of the model's weights.
    """
    if isinstance(data, Dataset):
        return data
    if isinstance(data, DataBundle):
        return data.split(split)
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = (_as_tensor(v) for v in data)
        return Dataset(x, y)
    raise DataError(
        f"expected a Dataset, DataBundle or (x, y) tuple of tensors, got {type(data).__name__}"
    )


def _as_tensor(value: Any) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    return tensor.float() if tensor.dtype == torch.float64 else tensor
