"""CLI: inspect shows sparsity over every parameter and what was left dense; evaluate prints
the task's metric and honours --loss or the run's recorded loss."""

from __future__ import annotations

import json

from brainsurgeon.cli.evaluate import _table
from brainsurgeon.runs import load_run
from brainsurgeon.training.evaluation import recorded_loss
from conftest import run_cli


def test_inspect_lists_sparsity_and_what_is_left_dense(trained_run):
    text = run_cli("inspect", str(trained_run), check=True).stdout
    assert "sparsity: " in text and "% of all 50,610 parameters" in text
    assert "left dense (3):" in text
    assert "fc1.bias (300): bias (include_bias to compress)" in text
    payload = json.loads(run_cli("inspect", str(trained_run), "--json", check=True).stdout)
    assert [d["name"] for d in payload["left_dense"]] == ["fc1.bias", "fc2.bias", "fc3.bias"]
    assert payload["compressible"]["tensors"] == 3


def test_evaluate_json_is_backwards_compatible_and_loss_flag_is_checked(trained_run):
    out = json.loads(run_cli("evaluate", str(trained_run), "--json", check=True).stdout)
    assert {"accuracy", "loss", "errors", "samples"} <= set(out) and "task" not in out
    bad = run_cli("evaluate", str(trained_run), "--loss", "msee")
    assert (
        bad.returncode == 2
        and "unknown loss 'msee'; valid: cosine, cross_entropy, l1, mse" in bad.stderr
    )


def test_regression_table_and_recorded_loss(trained_run):
    ev = {
        "task": "regression",
        "loss": 0.5,
        "mse": 0.5,
        "mae": 0.6,
        "rmse": 0.7071,
        "r2": 0.9,
        "samples": 10,
    }
    header, _, row = _table("runs/r", "test", ev).splitlines()
    assert header.split() == ["run", "split", "mse", "mae", "rmse", "r2", "loss", "samples"]
    assert "accuracy" not in header and row.split() == [
        "runs/r",
        "test",
        "0.5",
        "0.6",
        "0.7071",
        "0.9",
        "0.5",
        "10",
    ]
    assert recorded_loss({"loss": "mse"}) == "mse"
    assert recorded_loss({"training": {"loss": "l1"}}) == "l1"
    assert recorded_loss(load_run(trained_run).config) is None


def test_factorize_energy_that_removes_nothing_says_so(trained_run, tmp_path):
    out = tmp_path / "svd"
    proc = run_cli("factorize", str(trained_run), "--energy", "0.999999", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "nothing factorized: no layer shrinks with energy=0.999999" in proc.stdout
    assert "the model is unchanged" in proc.stderr  # said while working, too
    summary = json.loads((out / "config.json").read_text())["compression"]["factorization"]
    assert summary["factorized"] == [] and summary["note"].startswith("nothing factorized")
