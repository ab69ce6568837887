"""Second-order quantization (OBQ / GPTQ; Frantar & Alistarh 2022, Frantar et al. 2023).

The layer-wise OBS solver with ``quant(w)`` in place of 0: columns of ``W (rows, cols)`` are
quantized one at a time and the error of each is spread over the not-yet-quantized columns
through the inverse of ``H = 2 X X^T / N`` (``X``: the layer's inputs on calibration data).
Tensors are processed in order, each seeing the inputs of the already-quantized ones before
it. The result lies on the same per-channel uniform grid as round-to-nearest, so it is
stored as a :class:`UniformQuant` over the solved weights.

``X`` is collected by forward hooks through the layer-input rules of
:mod:`brainsurgeon.curvature.layer_inputs`: Linear, ungrouped Conv2d, single-layer LSTM/GRU,
self-attention ``in_proj_weight`` and ``MultiheadAttention.out_proj`` (from the recomputed
context). An embedding's inputs are one-hot, so its ``H`` is diagonal and GPTQ equals
round-to-nearest, which is what it gets. Tensors whose inputs no rule can collect (a
2-layer LSTM, cross-attention, grouped convs) are refused by default, naming them, before
anything changes; ``unhooked="rtn"`` rounds them to nearest instead and the result lists them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ...curvature.layer_inputs import INPUT_RULES, LayerInputStats, hooks_visible, input_owner
from ...data.core import DataLike, Dataset, as_dataset
from ...errors import ConfigError, UnsupportedLayerError, check_positive_int
from ...models.adapters import layer_kind, layout_of
from ...state import original
from ...utils import preserved_modes
from ..base import as_matrix
from ..config import GridOptions, one_of
from ..registry import LayerPlan, Quantizer, attach, register_quantizer
from .uniform import UniformQuant, fake_quantize, fit_grid

UNHOOKED = ("error", "rtn")


@dataclass(frozen=True)
class GPTQConfig(GridOptions):
    """GPTQ on the uniform grid, 2..8 bits (default 4).

    ``samples``: calibration samples; ``damp``: ``H + damp * mean(diag H) I``; ``unhooked``:
    what to do with tensors whose layer inputs a hook cannot see ("error" | "rtn").
    """

    METHOD: ClassVar[str] = "gptq"
    BITS: ClassVar[tuple[int, int]] = (2, 8)
    DEFAULT_BITS: ClassVar[int] = 4

    samples: int = 1024
    damp: float = 0.01
    unhooked: str = "error"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("samples", self.samples)
        if not 0.0 <= self.damp < 1.0:
            raise ConfigError(f"damp must lie in [0, 1), got {self.damp}; e.g. damp=0.01")
        one_of("unhooked", self.unhooked, UNHOOKED)


def solver():
    """The pure GPTQ solver ``gptq(W, H, quant, damp=, keep=) -> W_q``."""
    from ...solvers import gptq

    return gptq


def _stats(model: nn.Module, layer: LayerPlan) -> LayerInputStats:
    owner = input_owner(model, layer.module)
    return LayerInputStats(
        layer.module, layer.name, torch.float64, tensor=layer.tensor, owner=owner
    )


@torch.no_grad()
def input_hessian(
    model: nn.Module, layer: LayerPlan, calib: Dataset, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """``H = 2 X X^T / N`` (float64, ``(cols, cols)``) of the tensor's inputs over ``calib``."""
    from ...curvature.early_stop import forward_batches

    stats = _stats(model, layer).attach()
    try:
        with preserved_modes(model, "eval"), hooks_visible():
            forward_batches(model, stats.owner, calib, batch_size, device)
    finally:
        stats.detach()
    return stats.hessian()


def _hookable(layer: LayerPlan) -> str | None:
    """None if the tensor's layer inputs can be collected (an input rule exists), else why."""
    module = layer.module
    if layout_of(module, layer.tensor).in_axis is None:
        return f"gptq solves weight matrices; {layer.name} is a bias"
    if not any(c in INPUT_RULES for c in type(module).__mro__):
        kinds = ", ".join(c.__name__ for c in INPUT_RULES)
        return f"gptq needs the layer inputs of {layer.name} and collects them for {kinds} weights"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"gptq handles ungrouped convolutions only; {layer.layer} has groups={module.groups}"
    return None


def _diagonal(layer: LayerPlan) -> bool:
    """Embedding rows see one-hot inputs: ``H`` is diagonal, so GPTQ is round-to-nearest."""
    return isinstance(layer.module, nn.Embedding | nn.EmbeddingBag)


@torch.no_grad()
def _unseen(model: nn.Module, layers: list[LayerPlan], calib: Dataset, device) -> dict[int, str]:
    """Why each planned tensor's inputs cannot be collected on one calibration batch (its
    hook never runs, or its input rule refuses the call, e.g. a 2-layer LSTM); absent: fine."""
    x, _ = next(iter(calib.batches(8, device=device)))
    why: dict[int, str] = {}
    for layer in layers:
        stats = _stats(model, layer).attach()
        try:
            with preserved_modes(model, "eval"), hooks_visible():
                model(x)
        except UnsupportedLayerError as err:
            why[id(layer)] = str(err)
        finally:
            stats.detach()
        if id(layer) not in why and stats.count_ == 0:
            why[id(layer)] = "no forward hook sees its inputs"
    return why


def _refuse(layer: LayerPlan, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"gptq cannot quantize {layer.layer} ({layer_kind(layer.module)}): {why}; exclude it "
        f"(--exclude {layer.layer}), pass unhooked='rtn' (--unhooked rtn) to round it to "
        "nearest on the same grid, or use another method (e.g. --method uniform)"
    )


@register_quantizer(
    GPTQConfig,
    "second-order (OBQ/GPTQ): layer-wise OBS with quant(w) in place of "
    "0 on calibration data; uniform grid, 2-8 bits",
)
class GPTQ(Quantizer):
    needs_data = True

    def supported(self) -> list[str]:
        return [c.__name__ for c in INPUT_RULES]

    def check(self, layer: LayerPlan, config: GPTQConfig) -> None:
        why = _hookable(layer)
        if why is not None and config.unhooked == "error":
            raise _refuse(layer, why)

    def apply(
        self,
        model: nn.Module,
        layers: list[LayerPlan],
        config: GPTQConfig,
        data: DataLike | None,
        device: torch.device,
    ) -> dict[str, Any]:
        if data is None:
            raise ConfigError(
                "gptq needs calibration data; pass data=... (the CLI uses the run's training data)"
            )
        calib = as_dataset(data, "train").subset(config.samples, seed=config.seed)
        rtn = [layer for layer in layers if _hookable(layer) is not None]
        hooked = [layer for layer in layers if _hookable(layer) is None and not _diagonal(layer)]
        unseen = _unseen(model, hooked, calib, device) if hooked else {}
        if unseen and config.unhooked == "error":  # refused before anything changes
            first = next(layer for layer in hooked if id(layer) in unseen)
            raise _refuse(first, unseen[id(first)])
        rtn_ids = {id(layer) for layer in rtn} | set(unseen)
        exact_rtn = {id(layer) for layer in layers if _diagonal(layer)}
        solve = solver()
        for layer in layers:
            if id(layer) in rtn_ids | exact_rtn:
                scale, zero = fit_grid(layer, config, layer.bits)
                attach(layer, UniformQuant(scale, zero, layer.bits, config.symmetric, layer.coded))
            else:
                H = input_hessian(model, layer, calib, device, config.batch_size)
                self.solve_layer(layer, H, config, solve)
        names = [layer.name for layer in layers if id(layer) in rtn_ids]
        if names:
            warnings.warn(
                f"gptq rounded {len(names)} tensor(s) to nearest (no layer inputs): "
                f"{', '.join(names)}",
                stacklevel=3,
            )
        return {"round_to_nearest": names} if names else {}

    @staticmethod
    def solve_layer(layer: LayerPlan, H: torch.Tensor, config: GPTQConfig, solve) -> None:
        """Quantize one tensor on its uniform grid by ``solve(W, H, quant)``; attach the state."""
        scale, zero = fit_grid(layer, config, layer.bits)
        W = as_matrix(layer.weight.float())
        s = scale.to(W).expand(W.shape[0]) if scale.numel() == 1 else scale.to(W)
        z = zero.to(W).expand(W.shape[0]) if zero.numel() == 1 else zero.to(W)
        bits, symmetric = layer.bits, config.symmetric

        def quant(col: torch.Tensor, j: int) -> torch.Tensor:
            return fake_quantize(col, s.to(col), z.to(col), bits, symmetric)

        keep = None if layer.keep is None else as_matrix(layer.keep)
        Wq = solve(W, H.to(W), quant, damp=config.damp, keep=keep)
        with torch.no_grad():
            original(layer.module, layer.tensor).copy_(Wq.reshape(layer.weight.shape))
        attach(layer, UniformQuant(scale, zero, bits, symmetric, layer.coded))
