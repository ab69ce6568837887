"""Frozen, versioned dataclass configs with a strict dict round trip.

Every technique's options are a frozen dataclass deriving from :class:`Config`. ``to_dict``
gives plain JSON-able data (with ``"type"`` and ``"version"``), ``from_dict`` rebuilds it and
rejects unknown keys by name, so a typo in a recipe or a JSON file never passes silently.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: subclasses are ``@dataclass(frozen=True)`` and may set ``VERSION``."""

    VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(self).__name__, "version": self.VERSION}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        data = dict(data)
        data.pop("type", None)
        version = data.pop("version", cls.VERSION)
        if version > cls.VERSION:
            raise ConfigError(
                f"{cls.__name__} version {version} is newer than this brainsurgeon understands "
                f"({cls.VERSION}); upgrade brainsurgeon"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(names)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(k, v, hints.get(k)) for k, v in data.items()}
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn JSON lists back into tuples where the field is typed as a tuple."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        hint = args[0] if len(args) == 1 else hint
        origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"field {name!r} must be {hint.__name__}, got {value!r}")
    return value
