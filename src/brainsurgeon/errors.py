"""Errors that reach users. Each says what was expected, what was found and what to do.

Every class subclasses ``ValueError`` (or ``TypeError``) so plain library callers can catch
them the usual way; the CLI turns any :class:`BrainsurgeonError` into one line on stderr and
exit code 2.
"""

from __future__ import annotations


class BrainsurgeonError(ValueError):
    """Base class for user-facing errors (bad input, bad configuration, missing files)."""


class ConfigError(BrainsurgeonError):
    """An option or configuration value is invalid."""


class DataError(BrainsurgeonError):
    """A data set is missing, corrupt or has the wrong shape, dtype or labels."""


class RunDirError(BrainsurgeonError):
    """A run directory is missing, corrupt, or would be overwritten without ``--force``."""


class UnsupportedLayerError(BrainsurgeonError):
    """A method needs a rule for a layer type that it does not have."""


class NumericalError(BrainsurgeonError):
    """A loss or statistic became NaN or infinite."""


class EncodingError(BrainsurgeonError):
    """Encoded bytes are truncated or corrupt and cannot be decoded."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``str(err)`` (at most ``limit`` characters): foreign
    exceptions (torch's C++ ones) carry stack frames that must not reach the one-line error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_fraction(name: str, value: float, *, closed_high: bool = False) -> float:
    """Validate ``0 < value < 1`` (or ``<= 1`` with ``closed_high``) and return it as float."""
    value = float(value)
    ok = 0.0 < value <= 1.0 if closed_high else 0.0 < value < 1.0
    if not ok:
        interval = "(0, 1]" if closed_high else "(0, 1)"
        raise ConfigError(f"{name} must lie in {interval}, got {value}; e.g. {name}=0.9")
    return value


def check_positive_int(name: str, value: int, *, allow_zero: bool = False) -> int:
    """Validate an integer that is > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or int(value) != value:
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    return value
