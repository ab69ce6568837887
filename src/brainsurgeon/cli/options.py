"""Command-line options built from a config dataclass: defaults written once, in the config.

``add_config_options(group, PruneConfig, fields=[...], help=HELP, choices=CHOICES)`` adds one
option per field, named after it (``finetune_lr`` -> ``--finetune-lr``), typed from its type
hint, defaulting to the field's default and listing the registry's names for fields with a
registry. ``config_from_args(PruneConfig, args, **overrides)`` builds the config back.

Registry names are shown in ``--help`` and checked by the config itself (not by argparse), so
a typo is one line with the valid names and a close match, exit code 2, like every other
mistake. ``parse_options`` is the one ``--option KEY=VALUE`` parser: values are JSON where
they parse, checked against the expected types when they are known.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Flag:
    """How one field appears on the command line, where the defaults do not fit.

    ``flag``: the option text (default ``--field-name``); ``invert``: a bool field that the
    flag sets to False (``include_first`` <- ``--exclude-first``); ``parse``: text -> value
    (e.g. ``"2:4"`` -> ``(2, 4)``), applied by :func:`config_from_args`; ``help`` /
    ``metavar`` as in argparse; ``show``: how ``--help`` writes the default.
    """

    flag: str | None = None
    help: str | None = None
    invert: bool = False
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    show: Callable[[Any], str] | None = None


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    fields: Iterable[str] | None = None,
    help: Mapping[str, str] | None = None,
    choices: Mapping[str, Iterable[str]] | None = None,
    flags: Mapping[str, Flag] | None = None,
) -> list[str]:
    """Add an option for each of ``fields`` of the dataclass ``cls`` (default: all scalar
    fields); returns the field names added. ``help``: per-field text (the default value is
    appended); ``choices``: per-field valid names (a registry's ``names()``)."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields) if fields is not None else [n for n in by_name if _scalar(hints[n])]
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}")
    for name in names:
        spec = (flags or {}).get(name, Flag())
        text = (help or {}).get(name) or spec.help or name.replace("_", " ")
        valid = list((choices or {}).get(name, []))
        _add(parser, name, hints[name], _default(by_name[name]), spec, text, valid)
    return names


def config_from_args(
    cls: type,
    args: argparse.Namespace,
    *,
    flags: Mapping[str, Flag] | None = None,
    **overrides: Any,
):
    """``cls(**fields)`` from ``args``: every field of ``cls`` that ``args`` holds (text of
    fields with a ``Flag.parse`` parsed now, so a mistake is a one-line :class:`ConfigError`),
    then ``overrides`` (fields the command reads itself, e.g. from a JSON file)."""
    values = vars(args)
    kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
    for name, spec in (flags or {}).items():
        if spec.parse is not None and isinstance(kwargs.get(name), str):
            kwargs[name] = spec.parse(kwargs[name])
    kwargs.update(overrides)
    return cls(**kwargs)


def parse_options(
    items: Iterable[str],
    what: str = "--option",
    *,
    types: Mapping[str, type] | None = None,
) -> dict[str, Any]:
    """``["hessian=ggn", "k=2"]`` -> ``{"hessian": "ggn", "k": 2}`` (JSON values if they parse).

    ``types``: expected type of known keys; a value of another type is a :class:`ConfigError`
    naming the key, the expected type and what was given.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what}: expected KEY=VALUE, got {item!r}; e.g. {what} hessian=ggn")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        want = (types or {}).get(key)
        if want is not None:
            value = _typed(what, key, value, text, want)
        out[key] = value
    return out


def option_types(fn: Callable[..., Any]) -> dict[str, type]:
    """Expected option types of a callable (a criterion's ``__init__``) from its defaults."""
    import inspect

    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.default is not inspect.Parameter.empty and p.default is not None:
            out[name] = type(p.default)
    return out


def float_list(what: str) -> Flag:
    """A :class:`Flag` for a tuple-of-floats field given as ``0.5,0.9`` (``what``: its flag)."""
    from .common import parse_float_list

    return Flag(parse=lambda text: tuple(parse_float_list(text, what=what)))


def comma_list(text: str) -> tuple[str, ...]:
    """``"fc1,fc2.*"`` -> ``("fc1", "fc2.*")`` (glob patterns or names)."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _typed(what: str, key: str, value: Any, text: str, want: type) -> Any:
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is str and not isinstance(value, str):
        return text
    if isinstance(value, want) and not (want is int and isinstance(value, bool)):
        return value
    raise ConfigError(
        f"{what} {key}: expected {_type_word(want)}, got {text!r}; e.g. {what} {key}="
        f"{_example(want)}"
    )


def _type_word(t: type) -> str:
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return words.get(t, t.__name__)


def _example(t: type) -> str:
    return {int: "128", float: "0.01", bool: "true", str: "ggn"}.get(t, "...")


def _scalar(hint: Any) -> bool:
    base = _base(hint)
    return base in (int, float, str, bool)


def _base(hint: Any) -> Any:
    """``int | None`` -> int; ``tuple[str, ...]`` -> tuple."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    return typing.get_origin(hint) or hint


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _add(parser, name, hint, default, spec: Flag, text: str, valid: list[str]) -> None:
    flag = spec.flag or "--" + name.replace("_", "-")
    base = _base(hint)
    if valid:
        text += f": {' | '.join(valid)}"
    if base is bool:
        action = "store_false" if spec.invert or default is True else "store_true"
        if default is True and not spec.invert and not spec.flag:
            flag = "--no-" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, action=action, default=default, help=text)
        return
    if default not in (None, (), ""):
        if spec.show is not None:
            shown = spec.show(default)
        else:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text += f" (default: {shown})"
    kind = str if spec.parse else (comma_list if base is tuple else base)
    metavar = spec.metavar or ("A,B,..." if base is tuple else None)
    parser.add_argument(flag, dest=name, type=kind, default=default, help=text, metavar=metavar)


def add_loss_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--loss NAME``: the loss the command measures and minimises (default cross entropy)."""
    from ..losses import LOSSES

    parser.add_argument(
        "--loss",
        default=None,
        metavar="NAME",
        help=f"loss: {' | '.join(LOSSES.names())} (default: cross_entropy)",
    )


def add_target_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--layers`` / ``--exclude``: glob patterns choosing the compressed tensors."""
    parser.add_argument(
        "--layers",
        type=comma_list,
        default=None,
        metavar="A,B,...",
        help=TARGET_HELP["layers"],
    )
    parser.add_argument(
        "--exclude", type=comma_list, default=(), metavar="A,B,...", help=TARGET_HELP["exclude"]
    )


TARGET_HELP = {
    "layers": "compress only layers or tensors matching these globs (e.g. 'fc*,conv2.weight')",
    "exclude": "leave layers or tensors matching these globs dense (e.g. '*.out_proj')",
}
