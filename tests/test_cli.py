"""The real entry point in a subprocess: JSON output, errors with exit code 2, no leftovers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli


def assert_clean_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_commands_and_teaches():
    proc = run_cli("--help", check=True)
    for cmd in ("train", "evaluate", "inspect", "data", "demo"):
        assert cmd in proc.stdout
    assert "typical session" in proc.stdout
    assert "examples:" in run_cli("train", "--help", check=True).stdout


def test_train_evaluate_inspect_json(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "--model",
        "mlp:64-32-10",
        "--data",
        "digits",
        "--epochs",
        "2",
        "--shift",
        "1",
        "--out",
        str(out),
        "--json",
        "--quiet",
        check=True,
    )
    result = json.loads(proc.stdout)
    assert json.loads((out / "config.json").read_text())["training"]["shift"] == 1
    assert result["run"] == str(out) and result["test_accuracy"] > 0.5
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "metrics.json",
        "model.safetensors",
    ]
    ev = json.loads(run_cli("evaluate", str(out), "--json", check=True).stdout)
    assert ev["accuracy"] == pytest.approx(result["test_accuracy"])
    ins = json.loads(run_cli("inspect", str(out), "--json", "--latency", check=True).stdout)
    assert ins["totals"]["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert ins["latency"]["batch_64_ms"] > 0
    text = run_cli("inspect", str(out), check=True).stdout
    assert "TOTAL" in text and "fc1" in text


def test_data_list_json():
    items = json.loads(run_cli("data", "list", "--json", check=True).stdout)["datasets"]
    names = {"digits", "mnist", "minilm", "bbc-news", "lee-sts", "lee-background"}
    assert {d["name"] for d in items} == names


def test_errors_are_one_line_exit_2(tmp_path, trained_run):
    assert_clean_error(run_cli("inspect", str(tmp_path / "nope")), "does not exist")
    assert_clean_error(
        run_cli("train", "--model", "resnet", "--out", str(tmp_path / "a")),
        "unknown model spec 'resnet'",
    )
    assert_clean_error(
        run_cli("train", "--epochs", "-3", "--out", str(tmp_path / "b")), "epochs must be >= 0"
    )
    assert_clean_error(
        run_cli("train", "--shift", "-2", "--out", str(tmp_path / "c")),
        "shift must be 0..1024 pixels",
    )
    assert_clean_error(
        run_cli("evaluate", str(trained_run), "--device", "tpu"), "unknown device 'tpu'"
    )
    assert_clean_error(
        run_cli("train", "--out", str(trained_run), "--epochs", "1"), "already exists", "--force"
    )
    np.savez(
        tmp_path / "bad.npz",
        x_train=np.zeros((10, 16), np.float32),
        y_train=np.zeros(9, np.int64),
        x_test=np.zeros((4, 16), np.float32),
        y_test=np.zeros(4, np.int64),
    )
    assert_clean_error(
        run_cli("train", "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "c")),
        "x_train has 10 samples but y_train has 9",
    )
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c"))


def test_corrupt_safetensors(tmp_path, trained_run):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained_run, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    assert_clean_error(run_cli("evaluate", str(bad)), "corrupt", "re-create")


def test_demo_writes_runs_and_compares(tmp_path):
    proc = run_cli("demo", "--out", str(tmp_path / "demo"), "--json", "--quiet", check=True)
    result = json.loads(proc.stdout)
    before, after = result["before"], result["after"]
    assert after["nonzeros"] < before["nonzeros"]
    assert after["accuracy"] > 0.85
    assert (tmp_path / "demo").is_dir()
    assert (
        json.loads(run_cli("inspect", result["final_run"], "--json", check=True).stdout)["totals"][
            "nonzeros"
        ]
        == after["nonzeros"]
    )
