"""``brainsurgeon quantize`` / ``quantizers`` through the real entry point."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli


def assert_clean_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brainsurgeon quantize: error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_quantizers_lists_every_method():
    from brainsurgeon.quantization import QUANTIZERS

    items = json.loads(run_cli("quantizers", "--json", check=True).stdout)["quantizers"]
    assert [i["name"] for i in items] == QUANTIZERS.names()
    gptq = next(i for i in items if i["name"] == "gptq")
    assert gptq["needs_data"] and gptq["bits"] == "2-8" and gptq["config"] == "GPTQConfig"
    assert "unhooked" in gptq["options"] and "init" not in gptq["options"]
    text = run_cli("quantizers", check=True).stdout
    assert "kmeans" in text and "Deep Compression" in text


def test_quantize_writes_a_loadable_run(trained_run, tmp_path):
    out = tmp_path / "k4"
    proc = run_cli(
        "quantize",
        str(trained_run),
        "--method",
        "kmeans",
        "--bits",
        "4",
        "--per-layer-bits",
        "fc3=3",
        "--finetune-epochs",
        "1",
        "--out",
        str(out),
        "--json",
        "--quiet",
        check=True,
    )
    payload = json.loads(proc.stdout)
    assert payload["method"] == "kmeans" and payload["run"] == str(out)
    bits = {r["layer"]: r["bits"] for r in payload["layers"]}
    assert bits == {"fc1.weight": 4, "fc2.weight": 4, "fc3.weight": 3}
    assert 4.0 < payload["bits_per_weight"] < 4.1
    assert payload["accuracy_after"] > payload["accuracy_before"] - 0.05
    assert len(payload["finetune"]) == 1

    from brainsurgeon.quantization import KMeansQuant  # registers the kinds
    from brainsurgeon.runs import load_run
    from brainsurgeon.training import evaluate

    run = load_run(out)
    assert isinstance(run.model.fc1.parametrizations.weight[0], KMeansQuant)
    q = run.config["compression"]["quantization"]
    assert q["config"]["method"] == "kmeans" and q["bits"]["fc3.weight"] == 3
    assert run.config["history"][-1]["step"] == "quantize"
    assert run.config["history"][-1]["parent"] == str(trained_run)
    acc = evaluate(run.model, run.data(progress=False))["accuracy"]
    assert acc == pytest.approx(payload["accuracy_after"])
    assert run.metrics["parent_test_accuracy"] == pytest.approx(payload["accuracy_before"])

    text = run_cli("quantize", str(out), "--method", "uniform", "--out", str(tmp_path / "x"))
    assert_clean_error(text, "already quantized")


def test_table_output_and_help(trained_run, tmp_path):
    proc = run_cli(
        "quantize",
        str(trained_run),
        "--method",
        "uniform",
        "--bits",
        "8",
        "--skip",
        "fc3",
        "--out",
        str(tmp_path / "u8"),
        "--quiet",
        check=True,
    )
    assert "bits/weight" in proc.stdout and "test accuracy" in proc.stdout
    assert "fc2.weight" in proc.stdout and "fc3.weight" not in proc.stdout  # --skip: --exclude
    assert proc.stderr == ""
    helptext = run_cli("quantize", "--help", check=True).stdout
    assert "examples:" in helptext and "--per-layer-bits" in helptext


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--method", "kmeans", "--bits", "9"], ["kmeans needs bits between 1 and 8, got 9"]),
        (["--method", "product", "--bits", "4"], ["k=16", "fc3", "at most 3"]),
        (["--method", "product", "--block-width", "7"], ["does not divide", "--block-width"]),
        (["--per-layer-bits", "fc1:5"], ["expected NAME=VALUE"]),
        (["--method", "kmeans", "--stages", "3"], ["--stages does not apply to kmeans", "--init"]),
        (["--method", "gptq", "--exclude", "fc9"], ["exclude pattern 'fc9' matches no"]),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(trained_run, tmp_path, args, fragments):
    out = tmp_path / "bad"
    proc = run_cli("quantize", str(trained_run), *args, "--out", str(out))
    assert_clean_error(proc, *fragments)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_existing_out_is_refused_without_force(trained_run, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    assert_clean_error(run_cli("quantize", str(trained_run), "--out", str(out)), "already exists")
    assert_clean_error(
        run_cli("quantize", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "does not exist"
    )


@pytest.mark.parametrize("flag, sequential", [("--sequential", True), ("--no-sequential", False)])
def test_gptq_sequential_can_be_switched_off(trained_run, tmp_path, flag, sequential):
    """``sequential`` defaults to True, so the flag has a ``--no-`` form."""
    out = tmp_path / "g"
    run_cli("quantize", str(trained_run), "--method", "gptq", "--bits", "4", flag,
            "--samples", "64", "--out", str(out), "--quiet", check=True)  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["compression"]["quantization"]["config"]["sequential"] is sequential
