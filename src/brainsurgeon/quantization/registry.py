"""The quantizer registry and the interface every method implements.

A quantizer validates each planned layer (``check``) and builds the parametrization that
holds its state (``build``); ``apply`` attaches them. Methods that need statistics (gptq)
override ``apply`` to collect them first. Register with::

    @QUANTIZERS.register("uniform", "affine n-bit grid, ...")
    class Uniform(Quantizer): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..registry import Registry

if TYPE_CHECKING:
    from ..data.core import DataLike
    from .base import QuantParametrization
    from .config import QuantConfig

QUANTIZERS: Registry[type[Quantizer]] = Registry("quantizer")

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class LayerPlan:
    """One layer to quantize: its name, module, bits and keep-mask (if it was pruned)."""

    name: str
    module: nn.Module
    bits: int
    keep: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight (after any mask), detached."""
        return self.module.weight.detach()

    @property
    def coded(self) -> int:
        """Weights that take a code: all of them, or the kept ones of a pruned layer."""
        return int(self.keep.sum()) if self.keep is not None else self.weight.numel()


class Quantizer:
    """One quantization method. Subclasses set the class attributes and implement ``build``.

    ``bits_range``: valid bits (inclusive); ``default_bits``: used when none is given;
    ``needs_data``: calibration data required; ``layer_types``: module classes it handles;
    ``fixed_bits``: the method has exactly this many bits (binary, ternary);
    ``finetune_lr``: default fine-tuning learning rate.
    """

    bits_range: tuple[int, int] = (1, 8)
    default_bits: int = 8
    fixed_bits: bool = False
    finetune_lr: float = 0.01
    needs_data: bool = False
    layer_types: tuple[type[nn.Module], ...] = WEIGHT_LAYERS

    def check(self, layer: LayerPlan, config: QuantConfig) -> None:
        """Raise a :class:`BrainsurgeonError` if ``layer`` cannot be quantized as configured."""

    def build(self, layer: LayerPlan, config: QuantConfig) -> QuantParametrization:
        raise NotImplementedError

    def apply(
        self,
        model: nn.Module,
        layers: list[LayerPlan],
        config: QuantConfig,
        data: DataLike | None,
    ) -> None:
        """Quantize every planned layer (``model`` and ``data`` serve methods with statistics)."""
        for layer in layers:
            attach(layer.module, self.build(layer, config))


def attach(module: nn.Module, param: QuantParametrization) -> None:
    """Append ``param`` to the parametrization chain of ``module.weight``."""
    parametrize.register_parametrization(module, "weight", param)
