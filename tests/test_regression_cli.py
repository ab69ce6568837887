"""A user's regression data set (.npz with float targets) through the commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainsurgeon.data import load_data
from brainsurgeon.errors import DataError
from conftest import run_cli


def _npz(path, n=240, targets=1):
    g = np.random.default_rng(0)
    x = g.normal(size=(n, 6)).astype(np.float32)
    w = g.normal(size=(6, targets)).astype(np.float32)
    y = np.tanh(x @ w).astype(np.float32)
    y = y[:, 0] if targets == 1 else y
    split = n * 3 // 4
    np.savez(path, x_train=x[:split], y_train=y[:split], x_test=x[split:], y_test=y[split:])
    return path


def test_float_targets_load_as_regression(tmp_path):
    data = load_data(str(_npz(tmp_path / "r.npz", targets=2)), progress=False)
    assert data.num_classes == 2 and data.train.y.dtype.is_floating_point
    bad = dict(np.load(_npz(tmp_path / "b.npz")))
    bad["y_test"] = bad["y_test"].astype(np.int64)  # float train, integer test
    np.savez(tmp_path / "b.npz", **bad)
    with pytest.raises(DataError, match="regression targets .* must be float"):
        load_data(str(tmp_path / "b.npz"), progress=False)


def test_train_prune_evaluate_a_regression_run(tmp_path):
    data = str(_npz(tmp_path / "r.npz"))
    run = tmp_path / "reg"
    out = run_cli(
        "train",
        "--model",
        "mlp:6-16-1",
        "--data",
        data,
        "--loss",
        "mse",
        "--epochs",
        "30",
        "--out",
        str(run),
        check=True,
    )
    assert json.loads((run / "config.json").read_text())["loss"] == "mse"
    run_cli(
        "prune",
        str(run),
        "--criterion",
        "obd",
        "--amount",
        "0.5",
        "--out",
        str(tmp_path / "p"),
        check=True,
    )
    out = run_cli("evaluate", str(tmp_path / "p"), "--json", check=True)
    result = json.loads(out.stdout)
    text = json.dumps(result)
    assert "mse" in text and "accuracy" not in text
