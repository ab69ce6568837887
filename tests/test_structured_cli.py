"""Structured pruning as users run it: prune --granularity, shrink, merge, and their refusals."""

from __future__ import annotations

import json

import pytest
import torch

import brainsurgeon as bs
from brainsurgeon.errors import ConfigError
from brainsurgeon.structured.api import shrink_model
from conftest import run_cli


@pytest.fixture(scope="module")
def masked(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("st") / "n50"
    run_cli(
        "prune", str(trained_run), "--granularity", "neuron", "--criterion", "l2",
        "--amount", "0.5", "--scheme", "per-layer", "--out", str(out), check=True,
    )  # fmt: skip
    return out


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_shrink_cuts_the_masked_units_and_keeps_the_outputs(masked, tmp_path):
    small = tmp_path / "small"
    proc = run_cli("shrink", str(masked), "--out", str(small), "--json", check=True)
    payload = json.loads(proc.stdout)
    assert payload["units"] == {"fc1": [150, 300], "fc2": [50, 100]}
    x = torch.randn(8, 1, 8, 8)
    before, after = bs.load(masked), bs.load(small)
    assert torch.allclose(_outputs(before, x), _outputs(after, x), atol=1e-5)
    assert after.fc1.out_features == 150 and after.fc2.in_features == 150
    assert sum(p.numel() for p in after.parameters()) == payload["params_after"]
    text = run_cli("inspect", str(small), check=True).stdout
    assert "150x64" in text and "fc1 300 -> 150" in text


def test_prune_with_shrink_writes_the_small_model(trained_run, tmp_path):
    out = tmp_path / "g"
    proc = run_cli(
        "prune", str(trained_run), "--granularity", "neuron", "--criterion", "group-obs",
        "--amount", "0.3", "--out", str(out), "--shrink", check=True,
    )  # fmt: skip
    assert "shrunk: parameters" in proc.stdout and (out / "rounds").is_dir()
    model = bs.load(out)
    assert model.fc1.out_features + model.fc2.out_features < 400
    ev = json.loads(run_cli("evaluate", str(out), "--json", check=True).stdout)
    assert ev["accuracy"] > 0.5


def test_merge_removes_units_and_the_run_loads(trained_run, tmp_path):
    out = tmp_path / "m"
    proc = run_cli("merge", str(trained_run), "--amount", "0.5", "--out", str(out), check=True)
    assert "units merged" in proc.stdout
    model = bs.load(out)
    assert model.fc1.out_features == 150 and model.fc2.in_features == 150
    assert _outputs(model, torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_structured_refusals_are_one_line(trained_run, tmp_path):
    cases = [
        (["--shrink"], "--granularity"),
        (["--granularity", "head"], "no head group"),
        (["--granularity", "neuron", "--criterion", "obs"], "unknown"),
        (["--granularity", "neuron", "--scheme", "nm"], "globally or per layer"),
    ]
    for extra, words in cases:
        proc = run_cli("prune", str(trained_run), "--out", str(tmp_path / "x"), *extra)
        assert proc.returncode == 2 and words in proc.stderr, (extra, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("brainsurgeon prune: error:") and "Traceback" not in proc.stderr
        assert not (tmp_path / "x").exists()


def test_shrink_model_of_a_dense_model_removes_nothing(digits):
    model = bs.build_model("mlp:64-16-10", digits.input_shape, digits.num_classes)
    result = shrink_model(model)
    assert result.units == {} and result.params_before == result.params_after
    with pytest.raises(ConfigError, match="keep at least one"):
        bs.prune(model, bs.PruneConfig(granularity="neuron", amount=0.99), digits, progress=False)


def test_group_lasso_training_kills_units_that_pruning_removes(digits):
    torch.manual_seed(0)
    model = bs.build_model("mlp:64-32-10", digits.input_shape, digits.num_classes)
    bs.fit(model, digits, bs.TrainConfig(epochs=15, lr=0.05, group_lasso=1e-2), progress=False)
    died = int((model.fc1.weight.detach().norm(dim=1) < 1e-3).sum())
    assert died >= 4  # DropNeuron's penalty drives whole rows to zero
    before = bs.evaluate(model, digits)["accuracy"]
    config = bs.PruneConfig(granularity="neuron", criterion="l2", amount=died / 32)
    bs.prune(model, config, digits, progress=False)
    result = shrink_model(model)
    assert result.units["fc1"] == [32 - died, 32]
    assert bs.evaluate(model, digits)["accuracy"] > before - 0.02


def test_layer_sparsity_sets_each_groups_fraction_of_units(digits):
    torch.manual_seed(0)
    model = bs.build_model("mlp:64-40-20-10", (1, 8, 8), 10)
    cfg = bs.PruneConfig(
        granularity="neuron", criterion="l2", amount=0.5, scheme="per-layer",
        layer_sparsity={"fc1": 0.75}, rounds=2, schedule="iterative",
    )  # fmt: skip
    result = bs.prune(model, cfg, digits, progress=False)
    assert result.rounds[-1]["units"] == {"fc1": [10, 40], "fc2": [10, 20]}
    with pytest.raises(ConfigError, match="not a neuron group; groups: fc1, fc2"):
        bs.prune(model, cfg.replace(layer_sparsity={"fc9": 0.5}), digits, progress=False)
