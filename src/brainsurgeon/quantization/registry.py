"""The quantizer registry: method name -> (config type, handler), and config type -> handler.

A handler validates each planned tensor (``check``) and builds the parametrization that holds
its state (``build``); ``apply`` attaches them. Methods that need statistics (gptq) override
``apply`` to collect them first. A method registers its handler with its own config::

    @register_quantizer(UniformConfig, "affine n-bit grid, ...")
    class Uniform(Quantizer): ...

``quantize(model, UniformConfig(bits=4))`` then dispatches on the config's type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..registry import Registry
from .config import QuantBase

if TYPE_CHECKING:
    from ..data.core import DataLike
    from .base import QuantParametrization


@dataclass
class LayerPlan:
    """One tensor to quantize: its name, module, bits, keep-mask (if pruned) and tensor name.

    ``name``: ``"fc1.weight"`` (the adapter's tensor name); ``layer``: the module's name.
    """

    name: str
    module: nn.Module
    bits: int
    keep: torch.Tensor | None = None
    tensor: str = "weight"
    layer: str = ""

    def __post_init__(self) -> None:
        if not self.layer:  # "fc1.weight" of tensor "weight" belongs to layer "fc1"
            suffix = f".{self.tensor}"
            self.layer = self.name[: -len(suffix)] if self.name.endswith(suffix) else self.name

    @property
    def weight(self) -> torch.Tensor:
        """The effective tensor (after any mask), detached."""
        return getattr(self.module, self.tensor).detach()

    @property
    def coded(self) -> int:
        """Weights that take a code: all of them, or the kept ones of a pruned tensor."""
        return int(self.keep.sum()) if self.keep is not None else self.weight.numel()


class Quantizer:
    """One quantization method's behaviour; its options live in its config (``config_type``).

    ``needs_data``: calibration data required. Subclasses implement ``build``.
    """

    config_type: type[QuantBase] = QuantBase
    needs_data: bool = False

    def supported(self) -> list[str]:
        """Layer types whose tensors this method quantizes: the adapter's whole table."""
        from ..models.adapters import supported_types

        return supported_types()

    def check(self, layer: LayerPlan, config: QuantBase) -> None:
        """Raise a :class:`BrainsurgeonError` if ``layer`` cannot be quantized as configured."""

    def build(self, layer: LayerPlan, config: QuantBase) -> QuantParametrization:
        raise NotImplementedError

    def apply(
        self,
        model: nn.Module,
        layers: list[LayerPlan],
        config: QuantBase,
        data: DataLike | None,
        device: torch.device,
    ) -> dict[str, Any]:
        """Quantize every planned tensor; returns notes for the result (e.g. fallbacks)."""
        for layer in layers:
            attach(layer, self.build(layer, config))
        return {}


@dataclass(frozen=True)
class QuantMethod:
    """A registered method: its name, config type and handler."""

    name: str
    config: type[QuantBase]
    handler: Quantizer


QUANTIZERS: Registry[QuantMethod] = Registry("quantizer")
HANDLERS: dict[type[QuantBase], Quantizer] = {}
DEFAULT_METHOD = "kmeans"


def register_quantizer(config: type[QuantBase], description: str):
    """Class decorator: register a :class:`Quantizer` subclass for ``config`` (its name is
    ``config.METHOD``)."""

    def deco(cls: type[Quantizer]) -> type[Quantizer]:
        if not config.METHOD:
            raise ValueError(f"{config.__name__} must set METHOD, the method's name")
        handler = cls()
        QUANTIZERS.register(config.METHOD, description)(QuantMethod(config.METHOD, config, handler))
        HANDLERS[config] = handler
        cls.config_type = config
        return cls

    return deco


def handler_for(config: Any) -> Quantizer:
    """The handler registered for ``type(config)``; a clear error for anything else."""
    for cls in type(config).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    valid = ", ".join(QUANTIZERS.get(n).config.__name__ for n in QUANTIZERS)
    raise ConfigError(
        f"quantize needs a method config ({valid}), got {type(config).__name__}; build one by "
        "name with brainsurgeon.quantization.quant_config('kmeans', bits=5)"
    )


def attach(layer: LayerPlan, param: QuantParametrization) -> None:
    """Append ``param`` to the parametrization chain of ``layer.module.<layer.tensor>``."""
    parametrize.register_parametrization(layer.module, layer.tensor, param)
