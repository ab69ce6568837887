"""The compressed file as users reach it: the shipped Deep Compression recipe on their own run,
the file in evaluate / inspect / report, and the inference runtimes it loads into."""

from __future__ import annotations

import json
import re

import pytest
import torch

import brainsurgeon as bs
from brainsurgeon.container import read
from brainsurgeon.recipes import load_recipe, shipped_recipes, start_from
from brainsurgeon.runtime.sparse import SparseLinear
from conftest import run_cli


@pytest.fixture(scope="module")
def compressed(trained_run, tmp_path_factory):
    """`brainsurgeon run deep-compression --load RUN` with a short schedule (a copy of the
    shipped recipe with fewer epochs), as JSON."""
    out = tmp_path_factory.mktemp("dc") / "dc"
    recipe = load_recipe("deep-compression").data
    prune = recipe["steps"][1]["prune"]
    prune.update(rounds=2, finetune_epochs=1)
    recipe["steps"][2]["quantize"]["finetune_epochs"] = 1
    path = out.parent / "dc.yaml"
    path.write_text(json.dumps(recipe))
    proc = run_cli("run", str(path), "--load", str(trained_run), "--out", str(out), check=True)
    return out, proc


def test_deep_compression_is_shipped_and_starts_from_a_run(trained_run):
    assert {"demo", "deep-compression"} <= set(shipped_recipes())
    recipe = load_recipe("deep-compression")
    steps = [kind for kind, _ in recipe.steps]
    assert steps[:3] == ["train", "prune", "quantize"] and "export" in steps
    loaded = start_from(recipe, trained_run)
    assert loaded["load"] == str(trained_run) and "model" not in loaded
    assert next(iter(loaded["steps"][0])) == "prune"


def test_each_stage_prints_accuracy_and_file_size(compressed):
    out, proc = compressed
    result = json.loads((out / "result.json").read_text())
    table = proc.stdout
    assert re.search(r"2\. quantize\s+test\s+[\d.]+\s+[\d,]+\s+[\d.]+x", table)
    final = out / "model.bsc"
    assert result["after"]["file_bytes"] == final.stat().st_size
    sizes = [s["file_bytes"] for s in result["steps"]]
    assert sizes[1] < 0.5 * sizes[0]  # k-means after pruning: at most 5-bit codes
    assert result["after"]["file_ratio"] > 15


def test_evaluate_inspect_and_report_take_the_file(compressed, tmp_path):
    out, _ = compressed
    final = out / "model.bsc"
    result = json.loads((out / "result.json").read_text())
    ev = json.loads(run_cli("evaluate", str(final), "--json", check=True).stdout)
    assert ev["accuracy"] == result["after"]["accuracy"]
    text = run_cli("inspect", str(final), check=True).stdout
    assert f"{final.stat().st_size:,} bytes on disk" in text
    report = tmp_path / "r.html"
    run_cli("report", str(final), "--out", str(report), check=True)
    assert "bytes on disk" in report.read_text()


def test_load_gives_an_inference_model_and_a_sparse_runtime(compressed):
    out, _ = compressed
    path = out / "model.bsc"
    dense = bs.load(path)
    sparse = bs.load(path, runtime="sparse")
    assert any(isinstance(m, SparseLinear) for m in sparse.modules())
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(dense(x), sparse(x), atol=1e-5)
    run = bs.load_run(out / "final", inference=True)
    assert not any("parametrizations" in k for k in run.model.state_dict())
    with torch.no_grad():
        assert torch.equal(run.model(x), dense(x))
    assert read(path).table().file_bytes == path.stat().st_size


def test_a_file_without_data_asks_for_it(tmp_path, digits):
    model = bs.build_model("mlp:64-16-10", digits.input_shape, digits.num_classes)
    bs.export(model, tmp_path / "bare.bsc")
    proc = run_cli("evaluate", str(tmp_path / "bare.bsc"))
    assert proc.returncode == 2 and "records no data set" in proc.stderr
    ok = run_cli("evaluate", str(tmp_path / "bare.bsc"), "--data", "digits", "--json", check=True)
    assert 0 <= json.loads(ok.stdout)["accuracy"] <= 1
