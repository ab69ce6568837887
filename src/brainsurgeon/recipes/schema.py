"""Recipe files: a YAML description of a whole pipeline, validated before anything runs.

::

    name: demo
    seed: 0
    data: digits                  # digits | mnist | IDX folder | .npz   (or leave out with load)
    model: mlp:64-128-64-10       # build and train a new model ...
    # load: runs/lenet            # ... or start from a run directory
    steps:                        # in order; each is one of the kinds below
      - train: {epochs: 30, lr: 0.05}              # TrainConfig fields
      - prune: {criterion: obd, amount: 0.8}       # PruneConfig fields
      - quantize: {method: kmeans, bits: 5}        # method + its config's fields
      - finetune: {epochs: 2}                      # FinetuneConfig fields (lr 0.005, halved)
      - factorize: {energy: 0.95}                  # FactorizeConfig fields
      - distill: {teacher: start, epochs: 2}       # DistillConfig fields; teacher: start | run
      - evaluate: {split: test}
    report: true                  # write report.html

Step kinds come from the registry :data:`brainsurgeon.recipes.steps.STEPS`. Every mistake is
reported with the field's path and its line in the file
(``steps[1].prune.criterion (line 9): unknown criterion 'obx'; valid: ...``).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import BrainsurgeonError, ConfigError, first_line
from .steps import STEPS, StepOptions

STEP_KINDS = STEPS  # the registry: names, descriptions, ``in``
TOP_LEVEL: dict[str, Any] = {
    "name": str,
    "description": str,
    "seed": int,
    "device": str,
    "data": str,
    "model": str,
    "model_kwargs": dict,
    "load": str,
    "steps": list,
    "report": bool,
    "sram": str | int,
}


class RecipeError(ConfigError):
    """A recipe field is missing, unknown, of the wrong type or has a bad value."""


@dataclass
class Recipe:
    """A validated recipe: the plain data, its source text, and the line of every field."""

    data: dict[str, Any]
    text: str
    source: str = "<recipe>"
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def steps(self) -> list[tuple[str, dict[str, Any]]]:
        return [next(iter(s.items())) for s in self.data["steps"]]

    @property
    def seed(self) -> int:
        return int(self.data.get("seed", 0))

    def where(self, path: str) -> str:
        """``path (line N)`` using the closest known line of ``path`` or a parent of it."""
        probe = path
        while probe and probe not in self.lines:
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
        line = self.lines.get(probe)
        return f"{path} (line {line})" if line else path

    def error(self, path: str, message: str) -> RecipeError:
        return RecipeError(f"{self.source}: {self.where(path)}: {message}")


def shipped_recipes() -> dict[str, Path]:
    """The recipes that come with brainsurgeon, by name (``demo``, ``deep-compression``)."""
    return {p.stem: p for p in sorted(Path(__file__).parent.glob("*.yaml"))}


def resolve_recipe(recipe: str | os.PathLike) -> Path:
    """A recipe file, or the shipped recipe of that name."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if str(recipe) in shipped:
        return shipped[str(recipe)]
    raise RecipeError(
        f"recipe file {path} does not exist and is not a shipped recipe "
        f"({', '.join(shipped)}); check the path (see `brainsurgeon run --help` for the format)"
    )


def start_from(recipe: Recipe, run: str | os.PathLike) -> dict[str, Any]:
    """``recipe`` applied to an existing run: its model, data and leading train steps give
    way to ``load: run`` (the run's own data is used)."""
    data = {k: v for k, v in recipe.data.items() if k not in ("model", "model_kwargs", "data")}
    steps = list(recipe.data.get("steps", []))
    while steps and next(iter(steps[0])) == "train":
        steps.pop(0)
    if not steps:
        raise RecipeError(
            f"{recipe.source}: nothing is left to run on {run} without its train steps"
        )
    return {**data, "load": str(run), "steps": steps}


def load_recipe(recipe: str | os.PathLike | dict[str, Any]) -> Recipe:
    """Read a recipe file (or take a dict), parse it with line marks and validate it."""
    if isinstance(recipe, dict):
        text = yaml.safe_dump(recipe, sort_keys=False)
        source = "<recipe>"
    else:
        path = resolve_recipe(recipe)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RecipeError(f"{source} is not a UTF-8 text file; a recipe is YAML text") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
        lines = _lines(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise RecipeError(f"{source}{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise RecipeError(
            f"{source}: nested too deeply to read (lists or mappings inside each other); "
            "a recipe is a flat mapping with a list of steps"
        ) from None
    except Exception as err:  # the YAML reader's own slips on odd input (e.g. a bare '!!int')
        raise RecipeError(
            f"{source}: not valid YAML ({type(err).__name__}: {first_line(err)})"
        ) from None
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: a recipe is a mapping of fields (name, data, model, "
            f"steps, ...), got {type(data).__name__}"
        )
    r = Recipe(data=data, text=text, source=source, lines=lines)
    validate(r)
    return r


def _lines(node: yaml.Node | None, path: str = "") -> dict[str, int]:
    """``{"steps[1].prune.criterion": 9, ...}``: 1-based line of every key and list item."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = f"{path}.{key.value}" if path else str(key.value)
            out[sub] = key.start_mark.line + 1
            out.update(_lines(value, sub))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            out[sub] = item.start_mark.line + 1
            out.update(_lines(item, sub))
    return out


def validate(r: Recipe) -> None:
    """Check every field; raise a :class:`RecipeError` naming the first bad one."""
    d = r.data
    _check_keys(r, "", d, TOP_LEVEL)
    for key, hint in TOP_LEVEL.items():
        if key in d and not _type_ok(d[key], hint):
            raise r.error(key, f"must be {_type_name(hint)}, got {_show(d[key])}")
    if ("model" in d) == ("load" in d):
        raise r.error(
            "model",
            "give exactly one of 'model' (build and train a new model) or "
            "'load' (start from a run directory)",
        )
    if "model" in d and "data" not in d:
        raise r.error(
            "data",
            "is missing: a new model needs data to train on; add e.g. "
            "'data: digits' (or digits | mnist | a folder | an .npz)",
        )
    if "data" in d:
        _check_data(r, d["data"])
    if "load" in d and not Path(d["load"]).is_dir():
        raise r.error(
            "load",
            f"run directory {d['load']!r} does not exist; train one first "
            "or fix the path (relative paths are from the current folder)",
        )
    if "sram" in d:
        from ..metrics.energy import parse_size

        try:
            parse_size(d["sram"])
        except BrainsurgeonError as err:
            raise r.error("sram", str(err)) from None
    steps = d.get("steps")
    if not steps:
        raise r.error(
            "steps",
            "is missing or empty; list the steps, e.g. "
            "'steps: [{train: {epochs: 10}}, {prune: {amount: 0.9}}]'",
        )
    for i, step in enumerate(steps):
        _check_step(r, i, step)
    _check_order(r)
    if "model" in d and r.steps[0][0] != "train":
        raise r.error(
            "steps[0]",
            f"a new model must be trained first: make the first step "
            f"'train', not {r.steps[0][0]!r}",
        )


def _check_order(r: Recipe) -> None:
    """Refuse step orders that would fail after the steps before them ran: a ``quantize``
    step on tensors an earlier ``quantize`` step already quantized (every tensor when the
    earlier one names no ``layers`` / ``exclude``, or the same ``layers``)."""
    covered: list[tuple[int, tuple]] = []  # (index, layers) of earlier quantize steps
    for i, (kind, options) in enumerate(r.steps):
        if kind != "quantize":
            continue
        layers = tuple(options.get("layers") or ())
        for j, earlier in covered:
            if earlier == () or earlier == layers:
                what = "every tensor" if earlier == () else f"layers {list(earlier)}"
                raise r.error(
                    f"steps[{i}].quantize",
                    f"steps[{j}] already quantizes {what}, and a tensor cannot be "
                    "quantized twice; merge the two steps, or give each its own 'layers'",
                )
        if not options.get("exclude"):
            covered.append((i, layers))


def _check_data(r: Recipe, name: str) -> None:
    from ..data import BUILTIN

    if name not in BUILTIN and not Path(name).expanduser().exists():
        raise r.error(
            "data",
            f"unknown data set {name!r}; valid: {', '.join(BUILTIN)}, a "
            "folder with the MNIST IDX files, or an .npz file",
        )


def _check_step(r: Recipe, i: int, step: Any) -> None:
    path = f"steps[{i}]"
    if not isinstance(step, dict) or len(step) != 1:
        raise r.error(
            path,
            f"each step is one 'kind: {{options}}' pair with kind one of "
            f"{', '.join(STEPS)}; got {_show(step)}",
        )
    kind, options = next(iter(step.items()))
    if kind not in STEPS:
        raise r.error(
            path,
            f"unknown step {kind!r}; valid: {', '.join(STEPS)}{_did_you_mean(kind, STEPS)}",
        )
    if options is None:
        step[kind] = options = {}
    if not isinstance(options, dict):
        raise r.error(f"{path}.{kind}", f"options must be a mapping, got {_show(options)}")
    fields = step_fields(kind)
    _check_keys(r, f"{path}.{kind}", options, fields)
    for key, value in options.items():
        if not _type_ok(value, fields[key]):
            raise r.error(
                f"{path}.{kind}.{key}", f"must be {_type_name(fields[key])}, got {_show(value)}"
            )
    try:
        step_config(kind, options, seed=r.seed)
    except BrainsurgeonError as err:
        bad = _named_field(str(err), options)
        where = f"{path}.{kind}.{bad}" if bad else f"{path}.{kind}"
        raise r.error(where, str(err)) from None


def step_fields(kind: str) -> dict[str, Any]:
    """Field name -> type hint of a step kind's options."""
    return STEPS.get(kind).fields()


def step_config(kind: str, options: dict[str, Any], *, seed: int) -> StepOptions:
    """The validated options of a step (the recipe seed fills ``seed`` if not given)."""
    return STEPS.get(kind).build(options, seed=seed)


def _check_keys(r: Recipe, path: str, given: dict[str, Any], valid: dict[str, Any]) -> None:
    for key in given:
        if key not in valid:
            where = f"{path}.{key}" if path else str(key)
            raise r.error(
                where,
                f"unknown field {key!r}{_did_you_mean(str(key), valid)}; "
                f"valid: {', '.join(sorted(valid))}",
            )


def _named_field(message: str, options: dict[str, Any]) -> str | None:
    """The option a config error talks about (criterion, method, amount, ...), if clear."""
    lowered = message.lower()
    for key in ("criterion", "method", "scheme", "schedule", "optimizer", "amount", "bits"):
        if key in options and (key in lowered or str(options[key]).lower() in lowered):
            return key
    for key in options:
        if key in lowered:
            return key
    return None


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    base = origin or hint
    if base is tuple:
        return isinstance(value, list | tuple)
    return isinstance(value, base) if isinstance(base, type) else True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(names) + (" (or null)" if type(None) in typing.get_args(hint) else "")
    base = typing.get_origin(hint) or hint
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dict: "a mapping",
        list: "a list",
        tuple: "a list",
    }.get(base, str(hint))


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _did_you_mean(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
