"""One registry helper for every family of techniques (criteria, selectors, quantizers, ...).

Names are validated when a technique registers; an unknown name fails with the valid ones::

    CRITERIA = Registry("criterion")

    @CRITERIA.register("magnitude", "|w|: Han et al. 2015")
    class Magnitude: ...

    CRITERIA.get("obd")        # the registered object
    CRITERIA.describe()        # {name: one-line description}
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


class Registry(Generic[T]):
    """A name -> object map with one-line descriptions and helpful lookup errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (lowercase, digits, '-' and '_')."""
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must match {_NAME.pattern}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if not description or "\n" in description:
            raise ValueError(f"{self.kind} {name!r} needs a one-line description")

        def deco(obj: T) -> T:
            self._items[name] = obj
            self._descriptions[name] = description
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered as ``name``; a :class:`ConfigError` listing valid names if none."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}.{hint}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        return {name: self._descriptions[name] for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
