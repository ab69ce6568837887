"""Model builders: ``lenet300``, ``lenet5``, ``mlp:IN-H1-...-OUT`` specs and users' factories.

A model is described by a JSON-able spec ``{"name", "input_shape", "num_classes", "kwargs"}``
so a run directory can rebuild it. Layer names are stable (``fc1``, ``conv1``, ...) because
per-layer options and saved state refer to them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, first_line
from ..registry import Registry

MODELS: Registry = Registry("model")
# SGD learning rates that train each registered model well from scratch (momentum 0.9,
# cosine schedule); anything else starts at 0.05. LeNet-5 diverges at 0.05 (Caffe uses 0.01).
DEFAULT_SGD_LR = {"lenet5": 0.01}


class MLP(nn.Sequential):
    """Flatten -> (Linear -> ReLU [-> Dropout]) * k -> Linear; layers named ``fc1..fcK``.

    ``hashed``: indices (0-based) of Linear layers built as HashedNets layers, with their
    compression factors.
    """

    def __init__(
        self,
        sizes: list[int],
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        hashed: dict[int, float] | None = None,
        hash_seed: int = 0,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        if input_dropout:
            layers["drop0"] = nn.Dropout(input_dropout)
        hashed = hashed or {}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i in hashed:
                from .hashed import HashedLinear

                layers[f"fc{i + 1}"] = HashedLinear(
                    n_in, n_out, compression=hashed[i], seed=hash_seed + i
                )
            else:
                layers[f"fc{i + 1}"] = nn.Linear(n_in, n_out)
            if i < len(sizes) - 2:
                layers[f"relu{i + 1}"] = nn.ReLU()
                if dropout:
                    layers[f"drop{i + 1}"] = nn.Dropout(dropout)
        super().__init__(layers)
        self.sizes = list(sizes)


class LeNet5(nn.Module):
    """Caffe LeNet-5 (Han et al. 2015): conv20 5x5, pool, conv50 5x5, pool, fc500, fc10.

    431,080 parameters on 1x28x28. Inputs smaller than 16 pixels use padding 2 so the
    same architecture runs on 8x8 digits.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (1, 28, 28),
        num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height = input_shape[0], input_shape[-1]
        pad = 2 if height < 16 else 0
        self.conv1 = nn.Conv2d(channels, 20, 5, padding=pad)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=pad)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        with torch.no_grad():
            n_flat = self._features(torch.zeros(1, *input_shape)).shape[1]
        self.fc1 = nn.Linear(n_flat, 500)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc2 = nn.Linear(500, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool2(self.conv2(self.pool1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.relu(self.fc1(self._features(x)))))


@MODELS.register(
    "lenet300", "LeNet-300-100: 784-300-100-10 MLP with ReLU (266,610 params on MNIST)"
)
def lenet300(input_shape, num_classes, dropout: float = 0.0):
    return MLP([math.prod(input_shape), 300, 100, num_classes], dropout=dropout)


@MODELS.register("lenet5", "Caffe LeNet-5: conv20-pool-conv50-pool-fc500-fc10 (431,080 params)")
def lenet5(input_shape, num_classes, dropout: float = 0.0):
    return LeNet5(tuple(input_shape), num_classes, dropout=dropout)


@MODELS.register(
    "resnet8", "ResNet-8: stem conv, 3 BasicBlocks (16/32/64, BatchNorm), avg pool, fc (78k)"
)
def resnet8(input_shape, num_classes, widths: tuple[int, int, int] = (16, 32, 64)):
    from .resnet import ResNet8

    return ResNet8(input_shape[0], num_classes, tuple(widths))


_MLP_SPEC = re.compile(r"^mlp:(?P<sizes>[0-9h.\-]+)(?P<opts>(,[a-z_]+=[0-9.]+)*)$")
_HIDDEN = re.compile(r"^(?P<n>\d+)(?P<h>h(?P<c>[0-9.]+)?)?$")


def parse_mlp(spec: str, input_shape, num_classes) -> dict[str, Any]:
    """Parse ``mlp:784-300h8-100-10,dropout=0.5`` into MLP kwargs (``h[c]`` = hashed, factor c)."""
    m = _MLP_SPEC.match(spec)
    if not m:
        raise ConfigError(
            f"cannot parse model spec {spec!r}; expected mlp:IN-H1-...-OUT with optional "
            "',dropout=P', e.g. mlp:784-300-100-10 or mlp:64-32h8-10,dropout=0.2"
        )
    parts = m["sizes"].split("-")
    sizes, hashed = [], {}
    for i, part in enumerate(parts):
        hm = _HIDDEN.match(part)
        if not hm:
            raise ConfigError(f"layer size {part!r} in {spec!r} is not an integer (or N h[factor])")
        sizes.append(int(hm["n"]))
        if hm["h"]:
            if i == 0:
                raise ConfigError(f"the input size in {spec!r} cannot be hashed; mark hidden sizes")
            hashed[i - 1] = float(hm["c"] or 8)
    if len(sizes) < 2:
        raise ConfigError(f"{spec!r} needs at least an input and an output size")
    n_in = math.prod(input_shape)
    if sizes[0] != n_in:
        raise ConfigError(
            f"{spec!r} starts with {sizes[0]} inputs but the data has {n_in} "
            f"(shape {tuple(input_shape)}); write mlp:{n_in}-..."
        )
    if sizes[-1] != num_classes:
        raise ConfigError(
            f"{spec!r} ends with {sizes[-1]} outputs but the data has "
            f"{num_classes} classes; write mlp:...-{num_classes}"
        )
    kwargs: dict[str, Any] = {"sizes": sizes, "hashed": hashed}
    for opt in filter(None, m["opts"].split(",")):
        key, value = opt.split("=")
        if key not in ("dropout", "input_dropout", "hash_seed"):
            raise ConfigError(
                f"unknown mlp option {key!r}; valid: dropout, input_dropout, hash_seed"
            )
        kwargs[key] = int(value) if key == "hash_seed" else float(value)
    return kwargs


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a model from its spec name: a registered name, ``mlp:...`` or ``pkg.mod:factory``."""
    from ..state import set_spec

    kwargs = dict(kwargs or {})
    input_shape = tuple(input_shape)
    model = _build(name, input_shape, num_classes, kwargs)
    set_spec(model, model_spec(name, input_shape, num_classes, kwargs))
    return model


def _build(name: str, input_shape, num_classes, kwargs) -> nn.Module:
    if name == "hf":  # a Hugging Face model (brainsurgeon import); needs transformers
        from .hf import hf

        shown = {k: v for k, v in kwargs.items() if k != "config"}
        return _built_in("hf", shown, lambda: hf(input_shape, num_classes, **kwargs))
    if name.startswith("mlp:"):
        options = {**parse_mlp(name, input_shape, num_classes), **kwargs}
        return _built_in(name, kwargs, lambda: MLP(**options))
    if name in MODELS:
        return _built_in(name, kwargs, lambda: MODELS.get(name)(input_shape, num_classes, **kwargs))
    if re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", name):
        return _user_model(name, input_shape, num_classes, dict(kwargs))
    raise ConfigError(
        f"unknown model spec {name!r}; valid: {', '.join(MODELS.names())}, "
        "mlp:IN-H1-...-OUT (e.g. mlp:64-32-10), or package.module:factory"
    )


def _built_in(name: str, kwargs: dict[str, Any], make) -> nn.Module:
    """``make()`` for a built-in model: bad options are a :class:`ConfigError`, and a model
    whose weights would not fit in the free memory is refused before it is allocated (it is
    built on the meta device first: a crafted spec cannot exhaust the machine)."""
    from ..memory import available, human

    try:
        with torch.device("meta"):
            probe = make()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"bad options {kwargs} for model {name!r}: {first_line(err)}") from None
    tensors = [*probe.parameters(), *probe.buffers()]
    need = sum(t.numel() * t.element_size() for t in tensors)
    free = available()
    if free is not None and need > free:
        raise ConfigError(
            f"model {name!r} would need {human(need)} for its weights, more than the "
            f"{human(free)} of free memory; choose smaller layer widths"
        )
    return make()


def _user_model(name: str, input_shape, num_classes, kwargs) -> nn.Module:
    module_name, factory_name = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"cannot import {module_name!r} for model {name!r}: {err}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ConfigError(f"{module_name!r} has no callable {factory_name!r}")
    params = inspect.signature(factory).parameters
    for key, value in (("input_shape", input_shape), ("num_classes", num_classes)):
        if key in params and key not in kwargs:
            kwargs[key] = value
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{name}(**{json.dumps(kwargs)}) failed: {first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{name} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def model_spec(name: str, input_shape, num_classes, kwargs=None) -> dict[str, Any]:
    """The JSON record a run directory stores to rebuild the model."""
    return {
        "name": name,
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "kwargs": dict(kwargs or {}),
    }


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    return build_model(
        spec["name"], tuple(spec["input_shape"]), spec["num_classes"], spec.get("kwargs")
    )
