"""The criterion contract: statistics are collected once, then pure functions of them.

Three explicit kinds, each with one method to implement (besides optional ``statistics``):

* :class:`Criterion` scores: ``score(ctx, stats)`` returns, for every target tensor, a
  tensor of the same shape holding the *predicted damage* (loss increase) of removing each
  entry: low = safe to prune. It never masks;
* :class:`CompensatingCriterion` also moves the surviving weights after the selector chose
  (the OBS family): ``compensate(ctx, keep, stats=)``;
* :class:`Solver` chooses the pruned set inside its solve and updates the weights
  (layer-wise OBS / OBC / SparseGPT): ``solve(ctx, sparsity, nm, stats=) -> (keep, new)``.

``statistics(ctx)`` collects what a criterion needs from the data (a Hessian diagonal, an
inverse Fisher, layer-input Hessians) once per pruning step; the engine passes the result to
``score`` and to ``compensate``/``solve``, so nothing is collected twice or cached behind
the caller's back. Called without ``stats``, the convenience methods collect it themselves.
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
    """Scores entries. Subclasses set ``needs_data`` (and ``loss_scale``), implement
    ``score(ctx, stats)`` and, when they learn from data, ``statistics(ctx)``.

    Constructor keyword arguments are the criterion's options (e.g. ``hessian="ggn"``);
    unknown options are refused by the registry's ``make_criterion``.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "criterion"
    needs_data: ClassVar[bool] = True
    #: True when scores estimate the loss increase itself (OBD, OBS, measured damage), so
    #: ``saliency-check`` can report the error of the predicted loss change, not only ranks.
    loss_scale: bool = False
    #: the spread the class-distribution selector divides by: "scores" (their standard
    #: deviation per tensor) or "weights" (See et al.'s standard deviation of the weights).
    class_spread: ClassVar[str] = "scores"

    def statistics(self, ctx: SaliencyContext) -> Any:
        """What ``score`` needs from ``ctx.data``, collected once (None: nothing)."""
        return None

    def score(self, ctx: SaliencyContext, stats: Any) -> dict[str, torch.Tensor]:
        """``{name: predicted damage}`` (each the shape of its tensor) from ``stats``."""
        raise NotImplementedError

    def scores(self, ctx: SaliencyContext, stats: Any = None) -> dict[str, torch.Tensor]:
        """``score(ctx, stats)``, collecting ``statistics(ctx)`` first when not given."""
        return self.score(ctx, self.statistics(ctx) if stats is None else stats)

    def options(self) -> dict[str, Any]:
        return dict(getattr(self, "_options", {}))


class CompensatingCriterion(Criterion):
    """A criterion that, after selection, moves the surviving weights (OBS)."""

    kind: ClassVar[str] = "compensating criterion"

    def compensate(
        self, ctx: SaliencyContext, keep: dict[str, torch.Tensor], *, stats: Any = None
    ) -> dict[str, torch.Tensor]:
        """New values of the target tensors given boolean keep-masks (old zeros stay zero)."""
        raise NotImplementedError


class Solver(Criterion):
    """Chooses the pruned set inside its solve and updates the weights (layer-wise OBS).

    ``solve(ctx, sparsity, nm, stats=)`` returns ``(keep_masks, new_weights)`` and writes
    nothing to the model; ``sparsity`` is one fraction or one per tensor, ``nm`` an N:M
    pattern. A solver can also ``score`` (for ``saliency-check``)."""

    kind: ClassVar[str] = "solver"

    def solve(
        self,
        ctx: SaliencyContext,
        sparsity: dict[str, float] | float,
        nm: tuple[int, int] | None = None,
        *,
        stats: Any = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        raise NotImplementedError


CRITERIA: Registry[type[Criterion]] = Registry("criterion")


def register_criterion(name: str, description: str):
    """Class decorator registering a :class:`Criterion` (or a :class:`Solver`) under ``name``."""

    def deco(cls: type[Criterion]) -> type[Criterion]:
        if not issubclass(cls, Criterion) or cls.score is Criterion.score:
            raise TypeError(f"criterion {name!r} must subclass Criterion and implement score()")
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
