"""A memory budget (``--max-memory``) for the statistics passes: chunk sizes follow it.

``parse_bytes("2GB")`` -> 2,000,000,000 (``KB/MB/GB/TB`` decimal, ``KiB/MiB/GiB/TiB``
binary, a plain integer: bytes). :func:`budget` sets the budget for a block of work (the
``prune`` and ``quantize`` APIs do, from their config's ``max_memory``); statistics code
asks :func:`chunk` for how many samples to process at once::

    n = chunk(per_sample_bytes, default=256, fixed=stats_bytes, what="obd-sd statistics")

which is ``min(default, (budget - fixed) // per_sample_bytes)``, or ``default`` when no
budget is set. A budget too small for even one sample is a :class:`ConfigError` that says
how much one sample needs. The estimates are of the transient tensors of one chunk (per-
sample gradients, layer inputs), not of the model, which is resident in any case.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ConfigError

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_TEXT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_BUDGET: list[int | None] = [None]


def parse_bytes(value: str | int | None, what: str = "max_memory") -> int | None:
    """``"2GB"``, ``"512MiB"``, ``"1e9"`` (no: use digits), ``2000000`` -> bytes (None: None)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a size such as 2GB or 512MiB, got {value!r}")
    if isinstance(value, int):
        out = value
    else:
        m = _TEXT.match(str(value))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in UNITS:
            raise ConfigError(
                f"{what} must be a size such as 2GB, 512MiB or a number of bytes, got {value!r}"
            )
        out = int(float(m.group(1)) * UNITS[unit])
    if out <= 0:
        raise ConfigError(f"{what} must be positive, got {value!r}")
    return out


def current() -> int | None:
    """The budget in bytes, or None (no budget)."""
    return _BUDGET[-1]


@contextmanager
def budget(max_bytes: str | int | None) -> Iterator[int | None]:
    """Within the block, :func:`chunk` follows ``max_bytes`` (None: keeps the outer one)."""
    value = parse_bytes(max_bytes)
    _BUDGET.append(value if value is not None else current())
    try:
        yield current()
    finally:
        _BUDGET.pop()


def chunk(per_sample: int, default: int, *, what: str, fixed: int = 0) -> int:
    """Samples per chunk: ``min(default, (budget - fixed) // per_sample)``, at least 1.

    ``per_sample``: bytes of the transient tensors of one sample; ``fixed``: bytes needed
    whatever the chunk (accumulated statistics). Raises :class:`ConfigError` when the
    budget cannot hold ``fixed`` plus one sample."""
    limit = current()
    if limit is None:
        return default
    room = limit - int(fixed)
    n = room // max(int(per_sample), 1)
    if n < 1:
        raise ConfigError(
            f"max_memory={limit:,} bytes is too small for {what}: one sample needs "
            f"{int(per_sample):,} bytes on top of {int(fixed):,} for the statistics; "
            f"raise --max-memory to at least {int(fixed) + int(per_sample):,} bytes"
        )
    return int(min(default, n))


def available() -> int | None:
    """Bytes of memory the system can still give (``MemAvailable``; None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human(n: int) -> str:
    """``1234567890`` -> ``"1.23 GB"``."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
