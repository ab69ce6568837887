"""``quantize(model, config, data)``: plan and validate every tensor, quantize, fine-tune.

The config's type picks the method (torchao's ``quantize_(model, config)``): build one
directly (``KMeansConfig(bits=5)``) or by name (``quant_config("kmeans", bits=5)``). Every
check (bits, tensors, codebook sizes, block widths, data, hooks) runs before the model is
touched, so a bad option leaves the model as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import memory
from ..data.core import DataLike
from ..errors import ConfigError
from ..losses import LossFn, LossLike, checked, resolve_loss
from ..models.adapters import compressible
from ..pruning.masks import find_mask
from ..state import parametrizations_of
from ..training import TrainConfig, fit
from ..utils import check_finite, preserved_modes, require_finite, resolve_device
from .accounting import report
from .base import QuantParametrization
from .config import QuantBase, key_matches
from .registry import DEFAULT_METHOD, QUANTIZERS, LayerPlan, Quantizer, handler_for


@dataclass
class QuantResult:
    """What :func:`quantize` did: the (same) model, bits per tensor, storage, fine-tune history;
    ``notes``: what the method reports besides (gptq: ``round_to_nearest`` tensors)."""

    model: nn.Module
    config: QuantBase
    bits: dict[str, int]
    storage: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-able record for run configs: ``compression.quantization``."""
        total = self.storage["total"]
        return {
            "method": self.config.METHOD,
            "config": self.config.to_dict(),
            "bits": dict(self.bits),
            "bits_per_weight": total["bits_per_weight"],
            "ratio": total["ratio"],
            "finetune_epochs": len(self.history),
            **self.notes,
        }


def quantize(
    model: nn.Module,
    config: QuantBase,
    data: DataLike | None = None,
    *,
    loss: LossLike = None,
    device: str | torch.device = "auto",
    progress: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> QuantResult:
    """Quantize the compressible tensors of ``model`` in place as ``config`` says.

    ``config``: a method config (``UniformConfig(bits=4)``, ``quant_config("gptq")``, ...).
    ``data``: a DataBundle, Dataset or ``(x, y)``; needed for gptq (calibration) and for
    fine-tuning (``finetune_epochs > 0``), which minimises ``loss`` (a registered name or
    ``(output, target) -> scalar``; default cross entropy) on ``device``.
    ``callback(record)``: called after each fine-tuning epoch. Every submodule's train/eval
    flag is as it was on return. Every option is checked before the model changes, and an
    error while quantizing or fine-tuning (e.g. a diverging loss) undoes what was done.
    Returns a :class:`QuantResult`.
    """
    quantizer = handler_for(config)
    loss_fn = resolve_loss(loss)
    layers = plan(model, config, quantizer)
    if (quantizer.needs_data or config.finetune_epochs) and data is None:
        why = "calibration" if quantizer.needs_data else "fine-tuning"
        raise ConfigError(
            f"{config.METHOD} with finetune_epochs={config.finetune_epochs} needs "
            f"data for {why}; pass data=... (a DataBundle or Dataset)"
        )
    target = resolve_device(device)
    with preserved_modes(model), _undone_on_error(model, layers):
        model.to(target)
        with memory.budget(config.max_memory):
            notes = quantizer.apply(model, layers, config, data, target)
        _check_quantized(layers, config)
        history = _finetune(model, config, data, loss_fn, target, progress, callback)
    bits = {layer.name: layer.bits for layer in layers}
    return QuantResult(model, config, bits, report(model), history, notes)


def _check_quantized(layers: list[LayerPlan], config: QuantBase) -> None:
    """Every quantized tensor (and codebook) is finite, else a :class:`NumericalError` naming
    the layer and the method (k-means, gptq, ...); the caller undoes the quantization."""
    for layer in layers:
        fix = "check the run's weights (a diverged training run?)"
        if config.METHOD == "gptq":
            fix = "raise --damp (e.g. 0.1)"
        check_finite(layer.name, getattr(layer.module, layer.tensor), config.METHOD, fix)
        for pname, p in layer.module.named_parameters():
            if pname.startswith(f"parametrizations.{layer.tensor}.") and p.is_floating_point():
                check_finite(f"{layer.name} ({pname})", p, config.METHOD, fix)


@contextmanager
def _undone_on_error(model: nn.Module, layers: list[LayerPlan]) -> Iterator[None]:
    """If the block raises, detach the quantizers it attached to ``layers`` and restore every
    tensor and the device of ``model`` (costs one copy of the state_dict)."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    where = next(iter(saved.values())).device if saved else None
    try:
        yield
    except BaseException:
        for layer in layers:
            chain = parametrizations_of(layer.module, layer.tensor)
            if not chain or not isinstance(chain[-1], QuantParametrization):
                continue
            if len(chain) == 1:
                parametrize.remove_parametrizations(layer.module, layer.tensor, False)
            else:
                del layer.module.parametrizations[layer.tensor][-1]
        if where is not None:
            model.to(where)
        model.load_state_dict(saved)
        raise


def _finetune(
    model: nn.Module,
    config: QuantBase,
    data: DataLike | None,
    loss_fn: LossFn,
    device: torch.device,
    progress: bool,
    callback: Callable[[dict[str, Any]], None] | None,
) -> list[dict[str, Any]]:
    """Fine-tune the quantized model on ``loss_fn``: codebooks (their gradient sums over the
    weights sharing an entry) or, through the straight-through estimator, the float weights."""
    if not config.finetune_epochs:
        return []

    def objective(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return checked(loss_fn, m(x), y, "a fine-tuning batch")

    train = TrainConfig(
        epochs=config.finetune_epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed
    )
    return fit(
        model,
        data,
        train,
        device=device,
        loss_fn=objective,
        progress=progress,
        desc="fine-tune",
        callback=callback,
    )


def plan(
    model: nn.Module, config: QuantBase, quantizer: Quantizer | None = None
) -> list[LayerPlan]:
    """The tensors to quantize with their bits; raises on any bad option before changing anything.

    Tensors come from the adapter's table (``compressible(model, layers=, exclude=)``).
    """
    quantizer = quantizer or handler_for(config)
    targets = compressible(
        model, include_bias=config.include_bias, layers=config.layers, exclude=config.exclude
    )
    _check_keys(config, targets)
    layers = []
    for name, (module, tensor) in targets.items():
        if any(isinstance(p, QuantParametrization) for p in parametrizations_of(module, tensor)):
            raise ConfigError(
                f"{name} is already quantized; start from the float run or call "
                "brainsurgeon.make_permanent(model) first"
            )
        require_finite(name, getattr(module, tensor), "quantizing")
        mask = find_mask(module, tensor)
        keep = None if mask is None else mask.mask.clone()
        owner = name[: -len(tensor) - 1] if name != tensor else ""
        layer = LayerPlan(name, module, config.bits_for(name, owner), keep, tensor, owner)
        quantizer.check(layer, config)
        layers.append(layer)
    return layers


def _check_keys(config: QuantBase, targets: dict[str, tuple[nn.Module, str]]) -> None:
    """Every per-layer key must name a tensor this call quantizes."""
    for key in config.per_layer_bits:
        if not any(key_matches(key, name, name[: -len(t) - 1]) for name, (_, t) in targets.items()):
            raise ConfigError(
                f"per-layer bits key {key!r} matches no quantized layer; tensors: "
                f"{', '.join(targets) or '(none)'}"
            )


def quant_config(method: str = DEFAULT_METHOD, **options: Any) -> QuantBase:
    """The config of ``method`` with ``options`` (strict: an unknown option lists the valid
    ones; an unknown method lists the registered methods)::

        quant_config("kmeans", bits=5, finetune_epochs=2)  # -> KMeansConfig(bits=5, ...)
    """
    cls = QUANTIZERS.get(method).config
    unknown = sorted(set(options) - set(cls.options()))
    if unknown:
        raise ConfigError(
            f"{method} has no option(s) {', '.join(unknown)}; its options: "
            f"{', '.join(cls.options())}"
        )
    return cls.from_dict(options)


def config_from_dict(data: dict[str, Any]) -> QuantBase:
    """A method config from its ``to_dict()`` record, also from the one-config-for-all shape
    of brainsurgeon <= 0.1 (``{"type": "QuantConfig", "method": ..., every option}``)."""
    data = dict(data)
    method = data.get("method", DEFAULT_METHOD)
    cls = QUANTIZERS.get(method).config
    if data.get("type") != "QuantConfig":
        return cls.from_dict(data)
    skip = data.pop("skip", None) or ()  # module names or prefixes -> prefix globs
    names = {f.name for f in dataclasses.fields(cls)}
    kept = {k: v for k, v in data.items() if k in names}
    if skip:
        kept["exclude"] = tuple(kept.get("exclude", ())) + tuple(f"{s}*" for s in skip)
    return cls.from_dict(kept)
