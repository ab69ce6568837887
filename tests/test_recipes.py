"""Recipes: validation errors that name the field and line, runs, round trips, the CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from brainsurgeon import runs
from brainsurgeon.container import read
from brainsurgeon.recipes import RecipeError, demo_recipe_path, load_recipe, run_recipe
from brainsurgeon.training import evaluate
from conftest import run_cli

GOOD = """\
name: tiny
seed: 3
data: digits
model: mlp:64-16-10
steps:
  - train: {epochs: 2, lr: 0.05}
  - prune: {criterion: magnitude, amount: 0.6}
  - quantize: {method: kmeans, bits: 4}
  - finetune: {epochs: 1}
  - evaluate: {split: val}
report: false
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


@pytest.mark.parametrize(
    "text,pattern",
    [
        (
            edit("seed: 3", "sed: 3"),
            r"sed \(line 2\): unknown field 'sed' \(did you mean 'seed'\?\)",
        ),
        (
            edit("{epochs: 2, lr", "{epoch: 2, lr"),
            r"steps\[0\]\.train\.epoch \(line 6\): unknown field 'epoch' \(did you mean 'epochs'",
        ),
        (
            edit("{epochs: 2, lr", "{epochs: two, lr"),
            r"steps\[0\]\.train\.epochs \(line 6\): must be an integer, got 'two' \(str\)",
        ),
        (edit("seed: 3", "seed: 3.5"), r"seed \(line 2\): must be an integer, got 3\.5"),
        (
            edit("criterion: magnitude", "criterion: obx"),
            r"steps\[1\]\.prune\.criterion \(line 7\): unknown criterion 'obx'; valid: .*magnitude",
        ),
        (edit("data: digits\n", ""), r"data: is missing: a new model needs data"),
        (edit("data: digits", "data: nosuchset"), r"data \(line 3\): unknown data set 'nosuchset'"),
        (
            edit("amount: 0.6", "amount: 1.5"),
            r"steps\[1\]\.prune\.amount \(line 7\): amount must lie in \(0, 1\)",
        ),
        (
            edit("method: kmeans", "method: kmeens"),
            r"steps\[2\]\.quantize\.method \(line 8\): unknown quantizer 'kmeens'",
        ),
        (
            edit("  - evaluate", "  - evaluat"),
            r"steps\[4\] \(line 10\): unknown step 'evaluat'.*did you mean 'evaluate'",
        ),
        (
            edit("model: mlp:64-16-10", "model: x\nload: runs/x"),
            r"model \(line 4\): give exactly one",
        ),
        (
            edit("  - train: {epochs: 2, lr: 0.05}\n", ""),
            r"steps\[0\] \(line 6\): a new model must "
            r"be trained first",
        ),
        (
            edit("report: false", "report: false\nsram: 12XB"),
            r"sram \(line 12\): --sram: cannot read",
        ),
        (edit("steps:", "steps: [\n"), r"\(line \d+\): not valid YAML"),
        ("- just\n- a list\n", r"a recipe is a mapping of fields"),
    ],
)
def test_validation_errors_name_the_field_and_line(tmp_path, text, pattern):
    with pytest.raises(RecipeError, match=pattern):
        load_recipe(write(tmp_path, text))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(RecipeError, match="recipe file .*nope.yaml does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    text = "seed: 0\nload: runs/does-not-exist\nsteps:\n  - evaluate: {}\n"
    with pytest.raises(RecipeError, match=r"load \(line 2\): run directory 'runs/does-not-exist'"):
        load_recipe(write(tmp_path, text))


def test_demo_recipe_is_valid():
    recipe = load_recipe(demo_recipe_path())
    assert [k for k, _ in recipe.steps] == ["train", "prune", "quantize", "finetune", "evaluate"]
    assert recipe.data["data"] == "digits"


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    path = write(root, GOOD)
    return path, run_recipe(path, root / "out1", progress=False)


def test_run_writes_runs_with_their_recipe(first):
    path, result = first
    out = Path(result["out"])
    for run_dir in (out / "start", out / "final"):
        assert (run_dir / "recipe.yaml").read_text() == path.read_text()
    assert [s["step"] for s in result["steps"]] == [
        "train",
        "prune",
        "quantize",
        "finetune",
        "evaluate",
    ]
    assert result["steps"][1]["total_sparsity"] == pytest.approx(0.6, abs=0.01)
    assert result["after"]["sparsity"] > 0.5 and result["after"]["bits_per_weight"] < 8
    final = runs.load_run(out / "final")
    ev = evaluate(final.model, final.data(progress=False))
    assert ev["accuracy"] == result["after"]["accuracy"]
    assert final.config["history"][-1]["parent"] == str(out / "start")
    saved = json.loads((out / "result.json").read_text())
    assert saved["seed"] == 3 and "torch" in saved["environment"]


def test_same_seed_reproduces_the_metrics_from_the_stored_recipe(first, tmp_path):
    _, result = first
    again = run_recipe(
        Path(result["final_run"]) / "recipe.yaml", tmp_path / "again", progress=False
    )
    for key in ("accuracy", "loss", "nonzeros"):
        assert again["after"][key] == result["after"][key]
        assert again["before"][key] == result["before"][key]
    # the same tensors, byte for byte (the headers differ: paths, latency)
    tables = [read(Path(r["final_file"])).table().rows for r in (result, again)]
    assert tables[0] == tables[1]
    assert [s.get("accuracy") for s in again["steps"]] == [
        s.get("accuracy") for s in result["steps"]
    ]


def test_recipe_from_a_run_and_nothing_half_written(first, tmp_path):
    _, result = first
    recipe = {
        "seed": 1,
        "load": result["start_run"],
        "report": True,
        "steps": [{"prune": {"criterion": "random", "amount": 0.3}}, {"evaluate": None}],
    }
    done = run_recipe(recipe, tmp_path / "fromrun", progress=False)
    assert done["before"]["accuracy"] == result["before"]["accuracy"]
    page = Path(done["report"]).read_text()
    assert "Per-layer table" in page and "test accuracy before" in page
    assert yaml.safe_load((tmp_path / "fromrun" / "final" / "recipe.yaml").read_text()) == recipe
    bad = {
        **recipe,
        "steps": [
            {"prune": {"scheme": "per-layer", "amount": 0.5, "layer_sparsity": {"fc9": 0.5}}}
        ],
    }
    with pytest.raises(RecipeError, match="layer_sparsity names 'fc9'"):
        run_recipe(bad, tmp_path / "broken", progress=False)
    assert not (tmp_path / "broken").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def cli(*args: str):
    return run_cli(*args)


def test_cli_run(tmp_path):
    path = write(tmp_path, edit("  - quantize: {method: kmeans, bits: 4}\n", ""))
    done = cli("run", str(path), "--out", str(tmp_path / "o"), "--json", "-q")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["final_run"] == str(tmp_path / "o" / "final") and payload["seed"] == 3
    bad = write(tmp_path, edit("{epochs: 2, lr", "{epochs: 2, lrr"), "bad.yaml")
    res = cli("run", str(bad), "--out", str(tmp_path / "x"))
    assert res.returncode == 2
    assert "steps[0].train.lrr (line 6): unknown field 'lrr'" in res.stderr
    assert not (tmp_path / "x").exists()


CHAIN = """\
name: chain
seed: 0
data: digits
model: mlp:64-32-10
steps:
  - train: {epochs: 2}
  - prune: {amount: 0.5}
  - factorize: {energy: 0.9}
  - distill: {teacher: start, epochs: 1, shift: 0, noise: 0.0}
report: false
"""


def test_train_prune_factorize_distill_runs_end_to_end(tmp_path):
    result = run_recipe(write(tmp_path, CHAIN), tmp_path / "out", progress=False)
    kinds = [s["step"] for s in result["steps"]]
    assert kinds == ["train", "prune", "factorize", "distill"]
    prune_step, factor_step, distill_step = result["steps"][1:]
    assert prune_step["total_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert factor_step["weight_ratio"] > 1 and factor_step["weights_after"] > 0
    assert distill_step["epochs"] == 1 and distill_step["teacher"] == "start"
    final = runs.load_run(tmp_path / "out" / "final")
    assert [h["step"] for h in final.config["history"]][-3:] == ["prune", "factorize", "distill"]
    assert set(final.config["compression"]) >= {"pruning", "factorization", "distillation"}
    ev = evaluate(final.model, final.data(progress=False))
    assert ev["accuracy"] == result["after"]["accuracy"] > 0.5


def test_an_unknown_step_kind_lists_the_valid_ones(tmp_path):
    from brainsurgeon.recipes import STEPS

    text = edit("  - evaluate: {split: val}", "  - shrink: {}")
    with pytest.raises(RecipeError, match=r"steps\[4\] \(line 10\): unknown step 'shrink'") as err:
        load_recipe(write(tmp_path, text))
    listed = str(err.value).split("valid: ")[1]
    assert listed.split(", ") == STEPS.names()
    assert {"distill", "factorize", "finetune"} <= set(STEPS.names())


@pytest.fixture(scope="module")
def tiny_start(tmp_path_factory):
    """A trained 64-16-10 run directory that recipes start from with ``load:``."""
    root = tmp_path_factory.mktemp("tiny")
    done = run_recipe(
        {"seed": 0, "data": "digits", "model": "mlp:64-16-10", "report": False,
         "steps": [{"train": {"epochs": 2}}]},
        root / "base",
        progress=False,
    )  # fmt: skip
    return done["final_run"]


def _step_kinds():
    from brainsurgeon.recipes import STEPS

    return STEPS.names()


@pytest.mark.parametrize("kind", _step_kinds())
def test_every_step_kind_validates_runs_and_records_history(kind, tiny_start, tmp_path):
    """The contract every registered step kind keeps."""
    from brainsurgeon.recipes import STEPS

    step = STEPS.get(kind)
    recipe = {"seed": 0, "load": tiny_start, "report": False, "steps": [{kind: step.example}]}
    with pytest.raises(RecipeError, match=rf"steps\[0\]\.{kind}\.bogus .*: unknown field 'bogus'"):
        load_recipe({**recipe, "steps": [{kind: {**step.example, "bogus": 1}}]})
    name, hint = next((k, v) for k, v in step.fields().items() if v in (int, float, str))
    wrong = 5 if hint is str else "text"
    with pytest.raises(RecipeError, match=rf"steps\[0\]\.{kind}\.{name} .*: must be "):
        load_recipe({**recipe, "steps": [{kind: {**step.example, name: wrong}}]})
    done = run_recipe(recipe, tmp_path / "out", progress=False)
    record = done["steps"][0]
    assert record["step"] == kind and 0 <= record["accuracy"] <= 1
    history = runs.load_run(tmp_path / "out" / "final").config["history"]
    assert history[-1]["step"] == kind and history[-1]["recipe_step"] == 0


def test_distill_teacher_must_be_start_or_a_run(tiny_start, tmp_path):
    recipe = {
        "seed": 0,
        "load": tiny_start,
        "report": False,
        "steps": [{"distill": {"teacher": str(tmp_path / "nope"), "epochs": 1}}],
    }
    with pytest.raises(RecipeError, match=r"steps\[0\]\.distill.*teacher '.*nope' is not a run"):
        run_recipe(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    recipe["steps"] = [{"distill": {"teacher": tiny_start, "epochs": 1, "shift": 0}}]
    done = run_recipe(recipe, tmp_path / "out", progress=False)
    assert done["steps"][0]["teacher"] == tiny_start
