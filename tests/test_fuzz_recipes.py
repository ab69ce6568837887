"""Fuzz YAML recipes (``brainsurgeon run FILE``): each is valid or one clean refusal.

Recipes are random structures built around the schema: top-level fields and step options of
the right type, the wrong type, unknown keys, deep nesting, huge numbers, NaN, aliases,
broken YAML text. Every one is validated (``--check``); the cheap valid ones (a tiny MLP on
digits, at most 2 epochs or rounds) are also run for real into an output folder, which must
then be complete, or absent after a refusal.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis")
import yaml  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_support import (  # noqa: E402
    Tally,
    example_dir,
    fuzz_settings,
    judge,
    run_main,
    tiny_fixture,  # noqa: E402, F401 - the session fixture
)

TALLY = Tally("recipes")
COST_KEYS = {
    "epochs",
    "finetune_epochs",
    "rounds",
    "hint_epochs",
    "samples",
    "max_iter",
    "obs_steps",
    "eval_samples",
    "stages",
    "block_width",
    "batch_size",
}
NAMES = [
    "magnitude",
    "obd",
    "obs",
    "random",
    "kmeans",
    "uniform",
    "gptq",
    "product",
    "sgd",
    "adam",
    "cosine",
    "step",
    "global",
    "layerwise",
    "iterative",
    "oneshot",
    "test",
    "val",
    "kd",
    "start",
    "fc1",
    "element",
    "neuron",
    "bogus",
    "",
    "auto",
    "raw",
]


def _fields() -> dict[str, dict]:
    from brainsurgeon.recipes.steps import STEPS

    return {kind: STEPS.get(kind).fields() for kind in STEPS}


FIELDS = _fields()
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(NAMES),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
small_int = st.sampled_from([-1, 0, 1, 2])
numbers = st.sampled_from([-1, 0, 1e-9, 0.25, 0.5, 0.9, 1, 1.5, 10**40, math.nan, math.inf])


def _value(key: str, hint) -> st.SearchStrategy:
    """Mostly a value of the field's type (small for the costly fields), sometimes junk."""
    text = str(hint)
    if key in COST_KEYS:
        typed = small_int
    elif hint is int or "int" in text and "float" not in text:
        typed = st.sampled_from([-5, 0, 1, 2, 3, 8, 33, 10**30])
    elif hint is float or "float" in text:
        typed = numbers
    elif hint is bool:
        typed = st.booleans()
    elif hint is str or "str" in text and "tuple" not in text and "dict" not in text:
        typed = st.sampled_from(NAMES)
    elif "tuple" in text:
        typed = st.lists(st.sampled_from(["fc1", "fc2", "*", "", "nomatch"]), max_size=3)
    else:
        typed = st.dictionaries(st.sampled_from(["fc1", "fc2", "bogus", ""]), numbers, max_size=2)
    return st.one_of(typed, typed, typed, junk)


@st.composite
def steps(draw):
    kind = draw(st.sampled_from([*FIELDS, "bogus", "Train"]))
    fields = FIELDS.get(kind, {"epochs": int})
    keys = draw(st.lists(st.sampled_from([*fields, "bogus_key"]), max_size=4, unique=True))
    options = {k: draw(_value(k, fields.get(k, int))) for k in keys}
    if kind == "train":
        options.setdefault("epochs", 1)
    shape = draw(st.sampled_from(["ok", "ok", "ok", "ok", "none", "list", "two"]))
    if shape == "none":
        return {kind: None}
    if shape == "list":
        return {kind: list(options.values())}
    if shape == "two":
        return {kind: options, "evaluate": {}}
    return {kind: options}


@st.composite
def recipes(draw) -> dict:
    recipe: dict = {"name": "fuzz", "seed": 0, "data": "digits", "model": "mlp:64-8-10"}
    body = [{"train": {"epochs": 1}}] + draw(st.lists(steps(), max_size=3))
    if draw(st.booleans()):
        body = draw(st.lists(steps(), min_size=0, max_size=3))
    recipe["steps"] = body
    for _ in range(draw(st.integers(0, 3))):
        key = draw(
            st.sampled_from(
                [
                    "name",
                    "description",
                    "seed",
                    "device",
                    "data",
                    "model",
                    "model_kwargs",
                    "load",
                    "steps",
                    "report",
                    "sram",
                    "bogus",
                    "Steps",
                ]
            )
        )
        what = draw(st.sampled_from(["junk", "drop", "name", "path"]))
        if what == "drop":
            recipe.pop(key, None)
        elif what == "name":
            recipe[key] = draw(
                st.sampled_from(
                    [
                        "digits",
                        "mnist",
                        "mlp:64-4-10",
                        "cpu",
                        "cuda",
                        "lenet5",
                        "{run}",
                        "1KB",
                        "bogus",
                        "",
                    ]
                )
            )
        elif what == "path":
            recipe[key] = draw(st.sampled_from(["{run}", "{missing}", "{file}", "{npz}"]))
        else:
            recipe[key] = draw(junk)
    recipe["report"] = draw(st.sampled_from([False, False, True, "yes", 1]))
    return recipe


def _deep(n: int) -> str:
    return "steps: " + "[" * n + "]" * n + "\n"


TEXTS = [
    "",
    "null",
    "- a\n- b\n",
    "name: [unclosed\n",
    "\tname: tab\n",
    "a: &x [*x]\n",
    "steps: &a [*a, *a]\n",
    "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: &c [*b, *b, *b]\nd: &d [*c, *c, *c]\n"
    "e: &e [*d, *d, *d]\nf: &f [*e, *e, *e]\ng: &g [*f, *f, *f]\nh: [*g, *g, *g]\n",
    "!!python/object/apply:os.system ['echo pwned']\n",
    "name: !!binary AAAA\n",
    "? [a, b]\n: c\n",
    "steps:\n  - train: {epochs: 1e400}\n",
    "\x00\x01",
    "data: digits\nmodel: mlp:64-8-10\nsteps:\n  - train:\n      epochs: 1\n      epochs: 2\n",
    "seed: 99999999999999999999999999\ndata: digits\nmodel: mlp:64-8-10\n"
    "steps: [{train: {epochs: 1}}]\n",
    _deep(50),
    _deep(2000),
    "name: " + "x" * 100000 + "\n",
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("fuzz-recipes")
    made = tiny
    (root / "fixtures").mkdir()
    (root / "fixtures" / "plain.txt").write_text("x")
    import numpy as np

    np.savez(
        root / "fixtures" / "d.npz",
        x_train=np.zeros((12, 4)),
        y_train=np.arange(12) % 2,
        x_test=np.zeros((4, 4)),
        y_test=np.arange(4) % 2,
    )
    yield {
        "root": root,
        "run": str(made["run"]),
        "file": str(root / "fixtures" / "plain.txt"),
        "npz": str(root / "fixtures" / "d.npz"),
    }
    TALLY.write()


counter = [0]


def _fill(text: str, paths: dict, work: Path) -> str:
    for key in ("run", "file", "npz"):
        text = text.replace("{" + key + "}", paths[key])
    return text.replace("{missing}", str(work / "missing"))


def _cheap(recipe) -> bool:
    """A real run of this recipe takes about a second (tiny MLP, digits, few epochs)."""
    if not isinstance(recipe, dict) or recipe.get("model") not in ("mlp:64-8-10", "mlp:64-4-10"):
        return False
    if recipe.get("data") != "digits" or "load" in recipe or len(recipe.get("steps", [])) > 4:
        return False
    for step in recipe["steps"]:
        for kind, options in step.items():
            if kind == "distill" or not isinstance(options, dict):
                return False
            for key, value in options.items():
                if key in COST_KEYS and not (isinstance(value, int) and value <= 2):
                    return False
    return True


def check_recipe(text: str, paths: dict, *, execute: bool, recipe=None) -> None:
    with example_dir(Path(paths["root"]) / "work", counter) as work:
        file = work / "recipe.yaml"
        file.write_text(_fill(text, paths, work), encoding="utf-8", errors="surrogateescape")
        argv = ["run", str(file), "--quiet"]
        verdict = judge(run_main([*argv, "--check"]), quiet=True, work=work)
        if verdict[0] == "accepted" and execute and _cheap(recipe):
            out = work / "out"
            verdict = judge(
                run_main([*argv, "--out", str(out)]), quiet=True, work=work, outputs=(out,)
            )
            if verdict[0] == "accepted" and not (out / "model.bsc").is_file():
                verdict = ("failure", "accepted but OUT/model.bsc is missing")
    TALLY.check(verdict, text[:2000])


@fuzz_settings(default=50, share=0.9)
@given(recipe=recipes(), execute=st.integers(0, 9))
def test_random_recipes_validate_or_refuse_in_one_line(recipe, execute, paths):
    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    check_recipe(text, paths, execute=execute == 0, recipe=recipe)


@fuzz_settings(default=15, share=0.1)
@given(
    base=st.sampled_from(TEXTS),
    cut=st.integers(0, 400),
    insert=st.sampled_from(
        ["", ":", "- ", "\t", "{", "]", "&a", "*a", "!!int", "'", '"', "\n  ", "#"]
    ),
)
def test_broken_yaml_text_is_refused_in_one_line(base, cut, insert, paths):
    text = base[:cut] + insert + base[cut:]
    check_recipe(text, paths, execute=False)


def test_a_cheap_valid_recipe_runs(paths, tmp_path):
    """The generator's starting point is valid and runs: refusals are not the only outcome."""
    recipe = {
        "name": "ok",
        "data": "digits",
        "model": "mlp:64-8-10",
        "steps": [{"train": {"epochs": 1}}, {"prune": {"amount": 0.5}}],
    }
    file = tmp_path / "r.yaml"
    file.write_text(yaml.safe_dump(recipe))
    res = run_main(["run", str(file), "--out", str(tmp_path / "o"), "--quiet"])
    assert res.code == 0 and res.error is None, (res.stderr, res.error)
    assert (tmp_path / "o" / "model.bsc").is_file()
