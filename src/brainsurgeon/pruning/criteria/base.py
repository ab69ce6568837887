"""The criterion interface: a criterion scores, it never masks.

``scores(ctx)`` returns, for every target tensor, a tensor of the same shape holding the
*predicted damage* (loss increase) of removing each entry: low = safe to prune. Criteria
that also move the surviving weights (the OBS family) implement ``compensate``; criteria
whose selection is part of the solve (layer-wise OBS / SparseGPT) override ``prune``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ...data.core import Dataset
from ...errors import ConfigError
from ...registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> mean loss


@dataclass
class SaliencyContext:
    """Everything a criterion may use.

    ``targets``: parameter name (``"fc1.weight"``) -> (owning module, tensor name). Read the
    current effective value as ``getattr(module, tensor_name)`` (masks applied) and write
    through :func:`brainsurgeon.state.original`. ``data``: samples for statistics (already
    limited to the calibration budget), or None. ``loss_fn(logits, y)`` is the mean loss
    (cross entropy by default). ``masks``: current keep-masks (bool) of already pruned
    tensors, so criteria can ignore dead weights.
    """

    model: nn.Module
    targets: dict[str, tuple[nn.Module, str]]
    data: Dataset | None = None
    loss_fn: LossFn = nn.functional.cross_entropy
    batch_size: int = 256
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensor(self, name: str) -> torch.Tensor:
        module, tensor_name = self.targets[name]
        return getattr(module, tensor_name)

    def require_data(self, criterion: str) -> Dataset:
        if self.data is None or len(self.data) == 0:
            raise ConfigError(
                f"criterion {criterion!r} needs data to measure the loss; pass data=... "
                "(CLI: it uses the run's training split, --samples N to limit it)"
            )
        return self.data


class Criterion:
    """Base class. Subclasses set ``needs_data`` (and ``loss_scale``) and implement ``scores``.

    Constructor keyword arguments are the criterion's options (e.g. ``hessian="ggn"``);
    unknown options are refused by the registry's ``make_criterion``.
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    #: True when scores estimate the loss increase itself (OBD, OBS, measured damage), so
    #: ``saliency-check`` can report the error of the predicted loss change, not only ranks.
    loss_scale: ClassVar[bool] = False

    def scores(self, ctx: SaliencyContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def compensate(
        self, ctx: SaliencyContext, keep: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        """New values for the target tensors given boolean keep-masks, or None (no update)."""
        return None

    def options(self) -> dict[str, Any]:
        return dict(getattr(self, "_options", {}))


CRITERIA: Registry[type[Criterion]] = Registry("criterion")


def register_criterion(name: str, description: str):
    """Class decorator registering a :class:`Criterion` under ``name``."""

    def deco(cls: type[Criterion]) -> type[Criterion]:
        cls.name = name
        return CRITERIA.register(name, description)(cls)

    return deco


def make_criterion(name: str, **options: Any) -> Criterion:
    """Instantiate a registered criterion; unknown options fail with the valid ones."""
    import inspect

    cls = CRITERIA.get(name)
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"criterion {name!r} has no option(s) {unknown}; valid: {valid or 'none'}"
        )
    crit = cls(**options)
    crit._options = dict(options)
    return crit
