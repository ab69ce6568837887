"""The Hugging Face path from the command line, on a tiny BERT with its own tokenizer and the
shipped bbc-news sample: import -> prune (SparseGPT, heads + shrink) -> evaluate -> export."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import run_cli

transformers = pytest.importorskip("transformers", reason="Hugging Face tests need transformers")

SAMPLE = Path(__file__).parent / "data" / "text" / "bbc-news-sample.jsonl"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab(n: int) -> list[str]:
    words = collections.Counter()
    for line in SAMPLE.read_text().splitlines():
        words.update(re.findall(r"[a-z]+", json.loads(line)["text"].lower()))
    return SPECIAL + [w for w, _ in words.most_common(n)]


def _model_dir(root: Path, vocab: list[str], name: str = "tiny-bert") -> Path:
    folder = root / name
    src = root / f"{name}-vocab"
    src.mkdir(parents=True)
    (src / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast.from_pretrained(src).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    import os

    os.environ["BRAINSURGEON_CACHE"] = str(root / "cache")
    folder = _model_dir(root, _vocab(120))
    run = root / "run"
    run_cli(
        "import", str(folder), "--text", str(SAMPLE), "--calib", "60", "--val", "20",
        "--eval", "100", "--max-length", "32", "--out", str(run), check=True,
    )  # fmt: skip
    return root, folder, run


def test_import_records_a_perfect_original(imported):
    _, _, run = imported
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_cosine"] == pytest.approx(1.0, abs=1e-5)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["loss"] == "cosine" and cfg["model"]["name"] == "hf"
    assert (run / "hf" / "tokenizer_config.json").exists()


def test_sparsegpt_then_evaluate_and_export(imported):
    root, _, run = imported
    out = root / "sgpt"
    proc = run_cli(
        "prune", str(run), "--criterion", "layerwise-obs", "--option", "method=sparsegpt",
        "--amount", "0.5", "--scheme", "per-layer", "--exclude", "backbone.embeddings.*",
        "--out", str(out), check=True,
    )  # fmt: skip
    assert "test cosine to the original" in proc.stdout
    ev = json.loads(run_cli("evaluate", str(out), "--json", check=True).stdout)
    assert 0.5 < ev["cosine"] < 1.0 and 0.0 <= ev["top10"] <= 1.0
    bsc = root / "sgpt.bsc"
    run_cli("export", str(out), "--out", str(bsc), check=True)
    ev2 = json.loads(run_cli("evaluate", str(bsc), "--data", _data_arg(out), "--json").stdout)
    assert ev2["cosine"] == pytest.approx(ev["cosine"], abs=1e-6)


def _data_arg(run: Path) -> str:
    return json.loads((run / "config.json").read_text())["data"]["name"]


def test_heads_pruned_and_shrunk(imported):
    root, _, run = imported
    out = root / "heads"
    run_cli(
        "prune", str(run), "--granularity", "head", "--criterion", "l2", "--amount", "0.5",
        "--shrink", "--out", str(out), check=True,
    )  # fmt: skip
    from brainsurgeon import runs

    model = runs.load(out)
    sa = model.backbone.encoder.layer[0].attention.self
    assert sa.query.out_features == 16  # 2 of 4 heads of 8 dims kept


def test_a_tokenizer_of_another_model_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSURGEON_CACHE", str(tmp_path / "cache"))
    small = _model_dir(tmp_path, _vocab(120), "small")
    big = _model_dir(tmp_path, _vocab(400), "big")
    for f in big.iterdir():
        if "token" in f.name or "vocab" in f.name:
            (small / f.name).write_bytes(f.read_bytes())
    proc = run_cli(
        "import", str(small), "--text", str(SAMPLE), "--calib", "60", "--val", "20",
        "--eval", "100", "--max-length", "32", "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert proc.returncode == 2 and "does not match the model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    proc = run_cli("import", str(tmp_path / "m"), "--text", str(SAMPLE))
    assert proc.returncode == 2 and "no model.safetensors" in proc.stderr


def test_export_as_a_transformers_folder(imported):
    root, _, run = imported
    out = root / "as-hf"
    run_cli("export", str(run), "--format", "hf", "--out", str(out), check=True)
    model = transformers.AutoModel.from_pretrained(out)
    assert model.config.hidden_size == 32 and (out / "tokenizer_config.json").exists()
    proc = run_cli("export", str(run), "--format", "hf", "--out", str(out))
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_onnx_export_of_the_encoder_runs_in_onnxruntime(imported):
    pytest.importorskip("onnxruntime", reason="the ONNX round trip needs onnxruntime")
    from brainsurgeon import runs
    from brainsurgeon.deploy.session import make_session, run_session

    root, _, run = imported
    for runtime in ("dense", "int8"):
        out = root / f"enc-{runtime}.onnx"
        proc = run_cli(
            "export", str(run), "--format", "onnx", "--runtime", runtime, "--out", str(out),
            "--json", check=True,
        )  # fmt: skip
        assert json.loads(proc.stdout)["check"]["passed"]
    model = runs.load(run)
    x = model.example_input((2, 16), batch=3)  # another batch size and sequence length
    session = make_session((root / "enc-dense.onnx").read_bytes())
    with torch.no_grad():
        torch.testing.assert_close(run_session(session, x), model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--calib", "0", "--calib must be a positive integer"),
        ("--eval", "-3", "--eval must be a positive integer"),
        ("--max-length", "0", "--max-length must be a positive integer"),
        ("--max-length", "1", "room for [CLS] and [SEP]"),
        ("--max-length", "100000", "longer than the 64 positions"),
        ("--eval", "100000", "give more sentences or smaller --calib/--eval"),
        ("--calib", "x", "invalid int value"),
    ],
)
def test_bad_split_and_length_options_are_refused(imported, tmp_path, option, value, fragment):
    root, folder, _ = imported
    argv = ["import", str(folder), "--text", str(SAMPLE), "--calib", "60", "--val", "20",
            "--eval", "100", "--max-length", "32", "--out", str(tmp_path / "r")]  # fmt: skip
    argv[argv.index(option) + 1] = value
    proc = run_cli(*argv)
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_unknown_export_format_is_refused(imported, tmp_path):
    _, _, run = imported
    proc = run_cli("export", str(run), "--format", "tflite", "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and "--format must be bsc, onnx, hf or c" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_quantize_compare_and_sensitivity_report_the_cosine(imported, tmp_path):
    """An embedding run has no accuracy: quantize printed ``before['accuracy']`` (KeyError
    after writing the run); compare and sensitivity crashed the same way and left their
    folders. They now report the run's quality metric, the cosine, with the run's loss."""
    _, _, run = imported
    proc = run_cli("quantize", str(run), "--method", "gptq", "--bits", "4", "--group-size",
                   "16", "--act-order", "--exclude", "backbone.embeddings.*",
                   "--out", str(tmp_path / "q"), "--json", "--quiet", check=True)  # fmt: skip
    payload = json.loads(proc.stdout)
    assert 0.9 < payload["test_after"]["cosine"] <= 1.0 and payload["accuracy_after"] is None
    proc = run_cli("compare", str(run), "--criteria", "random,magnitude", "--sparsities", "0.5",
                   "--samples", "16", "--out", str(tmp_path / "c"), "--json", "--quiet",
                   check=True)  # fmt: skip
    payload = json.loads(proc.stdout)
    assert payload["baseline"]["metric"] == "cosine"
    assert payload["baseline"]["accuracy"] == pytest.approx(1.0, abs=1e-5)
    by = {r["method"]: r["accuracy"]["mean"] for r in payload["summary"]}
    assert by["random"] < by["magnitude"] < 1.0
    proc = run_cli("sensitivity", str(run), "--sparsities", "0.5", "--samples", "16",
                   "--out", str(tmp_path / "s"), "--quiet")  # fmt: skip
    assert proc.returncode == 0 and "validation cosine" in proc.stdout, proc.stderr


def test_distilling_a_text_teacher_into_an_mlp_is_refused(imported, tmp_path):
    _, _, run = imported
    proc = run_cli(
        "distill", "--teacher", str(run), "--student", "mlp:64-10", "--out", str(tmp_path / "s")
    )
    assert proc.returncode == 2 and "reads token ids" in proc.stderr
    assert "--finetune-epochs" in proc.stderr and not (tmp_path / "s").exists()
