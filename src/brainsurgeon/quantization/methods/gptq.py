"""Second-order quantization (OBQ / GPTQ; Frantar & Alistarh 2022, Frantar et al. 2023).

The layer-wise OBS solver with ``quant(w)`` in place of 0: columns of ``W (rows, cols)`` are
quantized one at a time and the error of each is spread over the not-yet-quantized columns
through the inverse of ``H = 2 X X^T / N`` (``X``: the layer's inputs on calibration data).
Tensors are processed in order, each seeing the inputs of the already-quantized ones before
it. The result lies on the same per-channel uniform grid as round-to-nearest, so it is
stored as a :class:`UniformQuant` over the solved weights.

``X`` is collected by a forward hook, which sees the inputs of Linear and (ungrouped) Conv2d
weights only when the module is called. Other tensors (LSTM/GRU weights, the packed
``in_proj_weight`` of attention, embeddings, a Linear its parent uses functionally such as
``MultiheadAttention.out_proj``) are refused by default, naming them; ``unhooked="rtn"``
rounds them to nearest on the same grid instead and the result lists them.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ...curvature.layer_inputs import INPUT_ROWS, LayerInputStats
from ...data.core import DataLike, Dataset, as_dataset
from ...errors import ConfigError, UnsupportedLayerError, check_positive_int
from ...models.adapters import layer_kind
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
    if importlib.util.find_spec("brainsurgeon.solvers") is not None:  # after the package move
        from ...solvers import gptq
    else:
        from ...pruning.solvers import gptq
    return gptq


@torch.no_grad()
def input_hessian(
    model: nn.Module, module: nn.Module, calib: Dataset, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """``H = 2 X X^T / N`` (float64, ``(cols, cols)``) of ``module``'s inputs over ``calib``."""
    stats = LayerInputStats(module, dtype=torch.float64).attach()
    try:
        with preserved_modes(model, "eval"):
            for x, _ in calib.batches(batch_size, device=device):
                model(x)
    finally:
        stats.detach()
    return stats.hessian()


def _hookable(layer: LayerPlan) -> str | None:
    """None if a forward hook on the module sees this tensor's inputs, else why not."""
    module = layer.module
    if layer.tensor != "weight" or not any(c in INPUT_ROWS for c in type(module).__mro__):
        kinds = ", ".join(c.__name__ for c in INPUT_ROWS)
        return f"gptq needs the layer inputs of {layer.name} and collects them for {kinds} weights"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"gptq handles ungrouped convolutions only; {layer.layer} has groups={module.groups}"
    return None


@torch.no_grad()
def _unseen(model: nn.Module, layers: list[LayerPlan], calib: Dataset, device) -> list[LayerPlan]:
    """The planned tensors whose module is never called on one calibration batch (e.g. a Linear
    its parent uses functionally, like ``MultiheadAttention.out_proj``)."""
    seen: set[int] = set()
    handles = [
        layer.module.register_forward_hook(lambda m, i, o: seen.add(id(m))) for layer in layers
    ]
    try:
        with preserved_modes(model, "eval"):
            x, _ = next(iter(calib.batches(8, device=device)))
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [layer for layer in layers if id(layer.module) not in seen]


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
        return [c.__name__ for c in INPUT_ROWS]

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
        hooked = [layer for layer in layers if _hookable(layer) is None]
        unseen = _unseen(model, hooked, calib, device) if hooked else []
        if unseen and config.unhooked == "error":  # refused before anything changes
            why = "no forward hook on it is called: its parent uses its weight functionally"
            raise _refuse(unseen[0], why)
        rtn_ids = {id(layer) for layer in rtn + unseen}
        solve = solver()
        for layer in layers:
            if id(layer) in rtn_ids:
                scale, zero = fit_grid(layer, config, layer.bits)
                attach(layer, UniformQuant(scale, zero, layer.bits, config.symmetric, layer.coded))
            else:
                H = input_hessian(model, layer.module, calib, device)
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
