"""Second-order quantization (OBQ / GPTQ; Frantar & Alistarh 2022, Frantar et al. 2023).

The layer-wise OBS solver of the pruning engine with ``quant(w)`` in place of 0: columns of
``W (rows, cols)`` are quantized one at a time and the error of each is spread over the
not-yet-quantized columns through the inverse of ``H = 2 X X^T / N`` (``X``: the layer's
inputs on calibration data). Layers are processed in order, each seeing the inputs of the
already-quantized layers before it. The result lies on the same per-channel uniform grid as
round-to-nearest, so it is stored as a :class:`UniformQuant` over the solved weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..curvature.layer_inputs import INPUT_ROWS, LayerInputStats
from ..data.core import DataLike, as_dataset
from ..errors import ConfigError, UnsupportedLayerError
from ..solvers import gptq as solve
from ..state import original
from .base import as_matrix
from .config import QuantConfig
from .registry import QUANTIZERS, LayerPlan, Quantizer, attach
from .uniform import UniformQuant, fake_quantize, fit_grid


@torch.no_grad()
def input_hessian(model: nn.Module, module: nn.Module, calib, batch_size: int = 256):
    """``H = 2 X X^T / N`` (float64) of ``module``'s inputs over the ``calib`` dataset."""
    stats = LayerInputStats(module, dtype=torch.float64).attach()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for x, _ in calib.batches(batch_size, device=device):
            model(x)
    finally:
        stats.detach()
        model.train(was_training)
    return stats.hessian()


@QUANTIZERS.register(
    "gptq",
    "second-order (OBQ/GPTQ): layer-wise OBS with quant(w) in place of "
    "0 on calibration data; uniform grid, 2-8 bits",
)
class GPTQ(Quantizer):
    bits_range = (2, 8)
    default_bits = 4
    needs_data = True
    layer_types = tuple(INPUT_ROWS)

    def check(self, layer: LayerPlan, config: QuantConfig) -> None:
        module = layer.module
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise UnsupportedLayerError(
                f"gptq handles ungrouped convolutions only; {layer.name} has groups="
                f"{module.groups}; skip it (--skip {layer.name}) or use --method uniform"
            )

    def apply(self, model, layers: list[LayerPlan], config: QuantConfig, data: DataLike | None):
        if data is None:
            raise ConfigError(
                "gptq needs calibration data; pass data=... (the CLI uses the run's training data)"
            )
        calib = as_dataset(data, "train").subset(config.samples, seed=config.seed)
        for layer in layers:
            H = input_hessian(model, layer.module, calib)
            self.solve_layer(layer, H, config, solve)

    @staticmethod
    def solve_layer(layer: LayerPlan, H: torch.Tensor, config: QuantConfig, solve) -> None:
        """Quantize one layer on its uniform grid by ``solve(W, H, quant)``; attach the state."""
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
            original(layer.module).copy_(Wq.reshape(layer.weight.shape))
        attach(layer.module, UniformQuant(scale, zero, bits, symmetric, layer.coded))
