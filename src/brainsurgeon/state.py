"""Compression state that lives on the model and survives state_dict, deepcopy and save/load.

Two kinds of state:

* **Parametrizations** (masks, fake quantization, codebooks) subclass
  :class:`StatefulParametrization` and are registered with ``torch.nn.utils.parametrize``.
  Their tensors are buffers, so they travel in ``state_dict``; their constructor arguments
  are JSON (``config()``), so a run directory can re-create them before loading the weights.
  ``make_permanent`` bakes them in.
* **Edits** change the architecture (low-rank factorization, structured surgery, hashed layers).
  Each edit kind registers ``apply(model, record)`` which rebuilds the structure (with
  placeholder weights) from a JSON record; ``brainsurgeon.load`` replays the records in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import RunDirError
from .registry import Registry

PARAMETRIZATIONS: Registry[type[StatefulParametrization]] = Registry("parametrization")
EDITS: Registry[Callable[[nn.Module, dict[str, Any]], None]] = Registry("model edit")


class StatefulParametrization(nn.Module):
    """Base for parametrizations whose state must be saved and restored.

    Subclasses set ``kind`` (their registry name), keep tensors as buffers, implement
    ``forward(W) -> W'``, ``config() -> dict`` (JSON-able constructor arguments) and
    ``from_config(config, original)`` (build an instance with buffers of the right shape; the
    values are filled in afterwards by ``load_state_dict``).
    """

    kind: str = ""

    def config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any], original: torch.Tensor) -> StatefulParametrization:
        raise NotImplementedError


def register_parametrization(kind: str, description: str):
    """Class decorator: register a :class:`StatefulParametrization` subclass under ``kind``."""

    def deco(cls: type[StatefulParametrization]) -> type[StatefulParametrization]:
        cls.kind = kind
        return PARAMETRIZATIONS.register(kind, description)(cls)

    return deco


def register_edit(kind: str, description: str):
    """Decorator registering ``apply(model, record)`` for an architecture edit kind."""
    return EDITS.register(kind, description)


def parametrizations_of(module: nn.Module, tensor_name: str) -> list[nn.Module]:
    """The parametrization chain on ``module.tensor_name`` (empty if none)."""
    if not parametrize.is_parametrized(module, tensor_name):
        return []
    return list(module.parametrizations[tensor_name])


def describe(model: nn.Module) -> list[dict[str, Any]]:
    """JSON records of every stateful parametrization on ``model``, in registration order."""
    records = []
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, chain in module.parametrizations.items():
            items = []
            for p in chain:
                if not isinstance(p, StatefulParametrization):
                    raise RunDirError(
                        f"{module_name}.{tensor_name} carries a {type(p).__name__} "
                        "parametrization that brainsurgeon cannot save; remove it or "
                        "subclass StatefulParametrization"
                    )
                items.append({"kind": p.kind, "config": p.config()})
            records.append({"module": module_name, "tensor": tensor_name, "chain": items})
    return records


# Packages whose import registers parametrization and edit kinds; imported on demand by
# ``restore``/``apply_edits`` so loading a run never depends on what the caller imported.
PLUGIN_MODULES = (
    "brainsurgeon.pruning.masks",
    "brainsurgeon.quantization",
    "brainsurgeon.factorization",
    "brainsurgeon.models.hashed",
    "brainsurgeon.structured",
)


def import_plugins() -> None:
    import importlib

    for name in PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:  # a technique this install does not have
            if err.name is None or not name.startswith(err.name):
                raise


def restore(model: nn.Module, records: list[dict[str, Any]]) -> None:
    """Re-create the parametrizations described by ``records`` (values come from state_dict)."""
    if records:
        import_plugins()
    for i, rec in enumerate(records):
        _check_record(rec, i)
        try:
            module = model.get_submodule(rec["module"])
        except AttributeError:
            raise RunDirError(
                f"parametrizations[{i}] names module {rec['module']!r}, which the model does "
                "not have; the run config was edited or belongs to another model"
            ) from None
        for item in rec["chain"]:
            cls = PARAMETRIZATIONS.get(item["kind"])
            original = getattr(module, rec["tensor"])
            param = cls.from_config(item["config"], original.detach())
            parametrize.register_parametrization(module, rec["tensor"], param, unsafe=True)


def _check_record(rec: Any, i: int) -> None:
    """A parametrization record has ``module``, ``tensor`` and a ``chain`` of ``kind`` s."""
    fields = ("module", "tensor", "chain")
    ok = isinstance(rec, dict) and all(k in rec for k in fields)
    ok = ok and isinstance(rec["chain"], list)
    ok = ok and all(isinstance(c, dict) and "kind" in c and "config" in c for c in rec["chain"])
    if not ok:
        raise RunDirError(
            f"parametrizations[{i}] in the run config is malformed (expected {{'module', "
            f"'tensor', 'chain': [{{'kind', 'config'}}]}}, got {str(rec)[:80]}); the run "
            "config was edited by hand or is damaged"
        )


def apply_edits(model: nn.Module, records: list[dict[str, Any]]) -> None:
    """Replay architecture edits (e.g. factorization) in order, before weights are loaded."""
    if records:
        import_plugins()
    for rec in records:
        EDITS.get(rec["kind"])(model, rec)


def make_permanent(model: nn.Module, kinds: set[str] | None = None) -> nn.Module:
    """Bake parametrizations into plain tensors (all of them, or only chains made of ``kinds``).

    After this, ``model.state_dict()`` has plain ``weight`` keys and no masks: pruned weights are
    stored as zeros and quantized weights as their dequantized values.
    """
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in list(module.parametrizations.keys()):
            chain = module.parametrizations[tensor_name]
            if kinds is None or all(getattr(p, "kind", None) in kinds for p in chain):
                _own_class(module)
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return model


def _own_class(module: nn.Module) -> None:
    """Give ``module`` a private copy of its parametrized class before removing a parametrization.

    ``deepcopy`` of a parametrized module shares torch's dynamically made ``Parametrized*``
    class, and ``remove_parametrizations`` deletes the property from that class, which would
    break every copy; a private class keeps the copies independent.
    """
    cls = module.__class__
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def original(module: nn.Module, tensor_name: str = "weight") -> torch.Tensor:
    """The trainable tensor under any parametrization (``module.weight`` if there is none)."""
    if parametrize.is_parametrized(module, tensor_name):
        return module.parametrizations[tensor_name].original
    return getattr(module, tensor_name)


SPEC_ATTR = "_brainsurgeon_spec"
EDITS_ATTR = "_brainsurgeon_edits"


def set_spec(model: nn.Module, spec: dict[str, Any]) -> None:
    """Attach the JSON spec that rebuilds ``model`` (travels with deepcopy)."""
    model.__dict__[SPEC_ATTR] = dict(spec)


def spec_of(model: nn.Module) -> dict[str, Any] | None:
    return model.__dict__.get(SPEC_ATTR)


def record_edit(model: nn.Module, record: dict[str, Any]) -> None:
    """Append an architecture edit record (``{"kind": ..., ...}``) to ``model``'s history."""
    EDITS.get(record["kind"])  # validates the kind
    model.__dict__.setdefault(EDITS_ATTR, []).append(dict(record))


def edits_of(model: nn.Module) -> list[dict[str, Any]]:
    return list(model.__dict__.get(EDITS_ATTR, []))
