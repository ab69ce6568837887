"""Shared fixtures: the digits data and a small trained run (built once per session)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("BRAINSURGEON_CACHE", os.path.join(os.path.dirname(__file__), ".cache"))
# One thread per test worker and per CLI subprocess: with pytest-xdist running one worker per
# core, more threads only make the workers spin against each other.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from brainsurgeon.data import load_data

    return load_data("digits", seed=0, progress=False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, digits):
    """A lenet300-on-digits run directory trained for a few epochs (about a second)."""
    from brainsurgeon import runs
    from brainsurgeon.models import build_model
    from brainsurgeon.training import TrainConfig, evaluate, fit
    from brainsurgeon.utils import seed_everything

    seed_everything(0)
    model = build_model("lenet300", digits.input_shape, digits.num_classes)
    fit(model, digits, TrainConfig(epochs=5, lr=0.05), progress=False)
    path = tmp_path_factory.mktemp("runs") / "lenet300-digits"
    cfg = {
        "data": digits.spec,
        "normalization": digits.normalization,
        "seed": 0,
        "training": TrainConfig(epochs=5).to_dict(),
        "history": [{"step": "train"}],
    }
    runs.save(
        model, path, config=cfg, metrics={"test_accuracy": evaluate(model, digits)["accuracy"]}
    )
    return path


def run_cli(*args: str, check: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real entry point in a subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "brainsurgeon.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc
