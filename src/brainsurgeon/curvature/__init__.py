"""Curvature statistics: accumulators fed by hooks or torch.func, then pure solvers.

Every accumulator has ``update(x, y)`` / ``reset()`` and a result; :func:`collect` feeds one
with a data set in eval mode. Targets are ``{"fc1.weight": (module, "weight")}`` maps (see
:func:`layer_targets`); statistics refer to the *effective* tensors (masks applied).

=====================  ===============================================================
``ExactDiagonal``      exact Hessian diagonal by Hessian-vector products (small nets)
``GGNDiagonal``        Gauss-Newton diagonal (OBD's Levenberg-Marquardt), layer rules
``GradientStats``      mean gradient, mean |per-sample gradient|, empirical Fisher diag
``HutchinsonDiagonal`` ``E[v * Hv]`` with Rademacher probes
``DamageStats``        Welford mean / sd of the per-sample damage (OBD-SD)
``InverseFisher``      inverse GGN or empirical Fisher (Woodbury), exact or WoodFisher blocks
``LayerInputStats``    ``H = 2 X X^T / N`` of a tensor's inputs (layer-wise OBS, GPTQ)
=====================  ===============================================================
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.core import Dataset
from ..errors import BrainsurgeonError
from ..models.adapters import compressible
from ..utils import preserved_modes
from .backend import METHODS, PerSampleBackend
from .diagonal import ExactDiagonal, GGNDiagonal, GradientStats, HutchinsonDiagonal
from .inverse import BlockLayout, InverseFisher, WoodburyInverse, inverse_bytes
from .layer_inputs import LayerInputStats
from .layers import LAYER_RULES, Targets
from .per_sample import DamageStats, Welford, damage_moments


class _Updatable(Protocol):
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None: ...


def collect(
    accumulator: _Updatable,
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "statistics",
) -> _Updatable:
    """Feed ``accumulator`` every batch of ``data`` with ``model`` in eval mode; return it."""
    n_batches = -(-len(data) // batch_size)
    bar = tqdm(
        total=n_batches,
        desc=desc,
        leave=False,
        unit="batch",
        disable=not (progress and sys.stderr.isatty()),
    )
    with preserved_modes(model, "eval"):
        try:
            for i, (x, y) in enumerate(data.batches(batch_size, device=device)):
                try:
                    accumulator.update(x, y)
                    check_statistics(accumulator)
                except BrainsurgeonError as err:  # name the batch: the user can look at it
                    raise type(err)(f"{err} (batch {i + 1} of {n_batches} of {desc})") from None
                bar.update(1)
        finally:
            bar.close()
    return accumulator


def check_statistics(accumulator: Any) -> None:
    """A :class:`NumericalError` naming the tensor and the statistic when an accumulated
    statistic (a dict of tensors or of running moments on the accumulator) is NaN or inf."""
    from ..errors import NumericalError

    what = getattr(accumulator, "what", type(accumulator).__name__)
    for attr, value in vars(accumulator).items():
        if not isinstance(value, dict):
            continue
        for name, item in value.items():
            parts = (
                [item]
                if isinstance(item, torch.Tensor)
                else [getattr(item, k) for k in ("mean", "m2") if hasattr(item, k)]
            )
            for t in parts:
                if (
                    isinstance(t, torch.Tensor)
                    and t.is_floating_point()
                    and not bool(torch.isfinite(t).all())
                ):
                    raise NumericalError(
                        f"{what} ({attr.rstrip('_')}) of {name} became NaN or infinite; the "
                        "loss or the activations overflow: check the calibration data's "
                        "normalisation and the weights (a diverged run?), or collect in float64"
                    )


def layer_targets(model: nn.Module, *, biases: bool = False) -> Targets:
    """``{"fc1.weight": (fc1, "weight"), ...}``: every compressible tensor of ``model`` (the
    adapter's table, :func:`brainsurgeon.models.adapters.compressible`)."""
    return compressible(model, include_bias=biases)


__all__ = [
    "LAYER_RULES",
    "METHODS",
    "BlockLayout",
    "DamageStats",
    "ExactDiagonal",
    "GGNDiagonal",
    "GradientStats",
    "HutchinsonDiagonal",
    "InverseFisher",
    "LayerInputStats",
    "PerSampleBackend",
    "Targets",
    "Welford",
    "WoodburyInverse",
    "collect",
    "damage_moments",
    "inverse_bytes",
    "layer_targets",
]
