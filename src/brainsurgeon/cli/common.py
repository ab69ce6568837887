"""Shared CLI pieces: common options, output (table or one JSON document), errors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .._io import _default


def add_command(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """A subcommand parser: one-line ``summary`` for ``brainsurgeon --help``, the module
    docstring as ``description`` and an ``epilog`` of examples, both printed as written."""
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_common(parser: argparse.ArgumentParser, *, device: bool = True, seed: bool = True) -> None:
    """``--json``, ``--quiet`` and (optionally) ``--device``, ``--seed`` on every command."""
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout instead of tables"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    if device:
        parser.add_argument(
            "--device",
            default="auto",
            metavar="auto|cpu|cuda",
            help="where to compute (default: auto = cuda if available)",
        )
    if seed:
        parser.add_argument("--seed", type=seed_type, default=0, help="random seed (default: 0)")


def seed_type(text: str) -> int:
    """``--seed``: an integer in [0, 2**32) (numpy's range), else a one-line argparse error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"a seed lies in [0, 2**32), got {value}")
    return value


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str | None = None) -> None:
    """Print ``payload`` as JSON with ``--json``, else ``text`` (or a pretty dump)."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(payload, default=_default) + "\n")
    else:
        print(text if text is not None else json.dumps(payload, indent=2, default=_default))


def say(args: argparse.Namespace, message: str) -> None:
    """Progress/info messages go to stderr so ``--json`` stdout stays one document."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[_fmt(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for k, row in enumerate(cells):
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def parse_kv_list(text: str, *, what: str, cast=float) -> dict[str, Any]:
    """Parse ``fc=5,conv=8`` into a dict, with a clear error naming ``what``."""
    from ..errors import ConfigError

    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise ConfigError(f"{what}: expected NAME=VALUE pairs like fc=5,conv=8, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = cast(value)
        except ValueError:
            raise ConfigError(f"{what}: {value!r} for {key!r} is not a {cast.__name__}") from None
    return out


def parse_float_list(text: str, *, what: str) -> list[float]:
    from ..errors import ConfigError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what}: the list is empty")
    return values
