"""``quantize(model, config, data)``: plan and validate every layer, quantize, fine-tune.

Every check (method, bits, layer types, codebook sizes, block widths, data) runs before the
model is touched, so a bad option leaves the model as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..data.core import DataLike
from ..errors import ConfigError, UnsupportedLayerError
from ..pruning.masks import find_mask
from ..state import parametrizations_of
from ..training import TrainConfig, fit
from .accounting import report
from .base import QuantParametrization
from .config import QuantConfig
from .registry import QUANTIZERS, WEIGHT_LAYERS, LayerPlan, Quantizer


@dataclass
class QuantResult:
    """What :func:`quantize` did: the (same) model, per-layer bits, storage, fine-tune history."""

    model: nn.Module
    config: QuantConfig
    bits: dict[str, int]
    storage: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-able record for run configs: ``compression.quantization``."""
        total = self.storage["total"]
        return {
            "config": self.config.to_dict(),
            "bits": dict(self.bits),
            "bits_per_weight": total["bits_per_weight"],
            "ratio": total["ratio"],
            "finetune_epochs": len(self.history),
        }


def quantize(
    model: nn.Module,
    config: QuantConfig,
    data: DataLike | None = None,
    *,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> QuantResult:
    """Quantize the Linear/Conv weights of ``model`` in place as ``config`` says.

    ``data``: a DataBundle or Dataset; needed for gptq (calibration) and for fine-tuning
    (``finetune_epochs > 0``). ``on_epoch(record)``: called after each fine-tuning epoch.
    Returns a :class:`QuantResult` (``model`` is changed in place).
    """
    quantizer = QUANTIZERS.get(config.method)()
    layers = plan(model, config, quantizer)
    if (quantizer.needs_data or config.finetune_epochs) and data is None:
        why = "calibration" if quantizer.needs_data else "fine-tuning"
        raise ConfigError(
            f"{config.method} with finetune_epochs={config.finetune_epochs} needs "
            f"data for {why}; pass data=... (a DataBundle or Dataset)"
        )
    quantizer.apply(model, layers, config, data)
    history = []
    if config.finetune_epochs:
        lr = config.finetune_lr or quantizer.finetune_lr
        history = fit(
            model,
            data,
            TrainConfig(
                epochs=config.finetune_epochs,
                lr=lr,
                batch_size=config.batch_size,
                seed=config.seed,
            ),
            device="auto",
            progress=progress,
            desc="fine-tune",
            on_epoch=on_epoch,
        )
    return QuantResult(model, config, {p.name: p.bits for p in layers}, report(model), history)


def plan(model: nn.Module, config: QuantConfig, quantizer: Quantizer) -> list[LayerPlan]:
    """The layers to quantize with their bits; raises on any bad option before changing anything."""
    names = _candidates(model, config, quantizer)
    _check_keys(model, config, names)
    layers = []
    for name in names:
        module = model.get_submodule(name)
        bits = _bits_for(name, config, quantizer)
        mask = find_mask(module, "weight")
        layer = LayerPlan(name, module, bits, None if mask is None else mask.mask.clone())
        quantizer.check(layer, config)
        layers.append(layer)
    if not layers:
        raise ConfigError(
            f"no layer to quantize: {config.method} handles "
            f"{_type_names(quantizer)} and none is left after skip={config.skip}"
        )
    return layers


def _candidates(model: nn.Module, config: QuantConfig, quantizer: Quantizer) -> list[str]:
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, WEIGHT_LAYERS) or _match(name, config.skip):
            continue
        if not isinstance(module, quantizer.layer_types):
            raise UnsupportedLayerError(
                f"{config.method} cannot quantize {name} ({type(module).__name__}); it handles "
                f"{_type_names(quantizer)}; skip the layer (--skip {name}) or use another method"
            )
        if any(isinstance(p, QuantParametrization) for p in parametrizations_of(module, "weight")):
            raise ConfigError(
                f"{name} is already quantized; start from the float run or call "
                "brainsurgeon.make_permanent(model) first"
            )
        out.append(name)
    return out


def _check_keys(model: nn.Module, config: QuantConfig, names: list[str]) -> None:
    """Every per-layer key must name a layer this method quantizes."""
    modules = dict(model.named_modules())
    for key in config.per_layer_bits:
        if any(_match(n, (key,)) for n in names):
            continue
        hit = [n for n in modules if n and _match(n, (key,))]
        if hit and not _match(hit[0], config.skip):
            raise UnsupportedLayerError(
                f"{config.method} cannot quantize {hit[0]} ({type(modules[hit[0]]).__name__}); it "
                f"handles {_type_names(QUANTIZERS.get(config.method)())}; drop {key!r} from "
                "the per-layer bits"
            )
        raise ConfigError(
            f"per-layer bits key {key!r} matches no quantized layer; layers: "
            f"{', '.join(names) or '(none)'}"
        )


def _bits_for(name: str, config: QuantConfig, quantizer: Quantizer) -> int:
    keys = [k for k in config.per_layer_bits if _match(name, (k,))]
    bits = config.per_layer_bits[max(keys, key=len)] if keys else config.bits
    bits = quantizer.default_bits if bits is None else bits
    lo, hi = quantizer.bits_range
    if not lo <= bits <= hi:
        want = f"{lo}" if lo == hi else f"between {lo} and {hi}"
        raise ConfigError(
            f"{config.method} needs bits {want}, got {bits} for {name}; "
            f"pass --bits {lo if lo == hi else f'{lo}..{hi}'}"
        )
    return bits


def _match(name: str, keys: tuple[str, ...] | list[str]) -> bool:
    return any(name == k or name.startswith(k) for k in keys)


def _type_names(quantizer: Quantizer) -> str:
    return ", ".join(t.__name__ for t in quantizer.layer_types)
