"""One test per failure the fuzz tests found (``tests/test_fuzz_*.py``), with its input.

Each was a traceback, a multi-line error, or an output left behind after a refusal; each is
now one line on stderr with exit code 2 and nothing written.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct

import numpy as np
import pytest

from fuzz_support import run_main


def refused(argv: list[str], *fragments: str) -> str:
    res = run_main([str(a) for a in argv] + ["--quiet"])
    assert res.error is None, res.error
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.code == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("brainsurgeon") and "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bsc(trained_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("bsc") / "model.bsc"
    assert run_main(["export", str(trained_run), "--out", str(path), "--quiet"]).code == 0
    return path


def test_argparse_mistakes_are_one_line_without_usage():
    line = refused(["train", "--epochs", "x"], "invalid int value: 'x'", "--help")
    assert "usage:" not in line


def test_demo_out_empty_is_refused(tmp_path, monkeypatch):  # cli: demo --out ''
    monkeypatch.chdir(tmp_path)
    refused(["demo", "--out", ""], "--out must name a folder")
    assert not any(tmp_path.iterdir())


def test_report_out_a_folder_is_refused(trained_run, tmp_path):  # cli: report RUN --out DIR
    refused(["report", trained_run, "--out", tmp_path, "--no-latency"], "is a directory")
    assert not any(tmp_path.iterdir())


def test_out_below_a_file_is_refused(trained_run, tmp_path):  # cli: prune RUN --out FILE/x
    (tmp_path / "f").write_text("x")
    refused(["prune", trained_run, "--out", tmp_path / "f" / "x"], "a file is in the way")


def test_seed_out_of_numpy_range_is_refused():  # cli: data check digits --seed -1
    refused(["data", "check", "digits", "--seed", "-1"], "a seed lies in [0, 2**32)")
    refused(["train", "--seed", str(2**64)], "a seed lies in [0, 2**32)")


def test_other_data_of_another_shape_is_refused(trained_run, tmp_path):
    """cli: evaluate RUN --data mnist (RUN trained on digits): was a matmul RuntimeError."""
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.random((12, 16), np.float32),
        y_train=np.arange(12) % 3,
        x_test=rng.random((6, 16), np.float32),
        y_test=np.arange(6) % 3,
    )
    refused(["evaluate", trained_run, "--data", tmp_path / "d.npz"], "(1, 4, 4)", "(1, 8, 8)")


def test_compare_bad_pattern_leaves_no_folder(trained_run, tmp_path):
    """cli: compare RUN --criteria magnitude --sparsities 0.5 --layers 'fc*.bias' left OUT."""
    out = tmp_path / "out"
    argv = [
        "compare",
        trained_run,
        "--criteria",
        "magnitude",
        "--sparsities",
        "0.5",
        "--samples",
        "32",
        "--out",
        out,
        "--layers",
        "fc*.bias",
    ]
    refused(argv, "matches no compressible layer")
    assert not out.exists()


def test_study_bad_lr_leaves_no_folder(trained_run, tmp_path):
    """cli: study obd-sd RUN ... --finetune-lr 0 left OUT with its first cell."""
    out = tmp_path / "out"
    argv = [
        "study",
        "obd-sd",
        trained_run,
        "--criteria",
        "magnitude",
        "--rounds",
        "1",
        "--finetune-epochs",
        "0",
        "--samples",
        "32",
        "--out",
        out,
        "--finetune-lr",
        "0",
    ]
    refused(argv, "finetune_lr must be > 0")
    assert not out.exists()


def test_regression_loss_on_class_labels_is_refused(trained_run):
    """cli: saliency-check RUN --loss mse: was 'size of tensor a (10) must match ... (32)'."""
    refused(
        [
            "saliency-check",
            trained_run,
            "--weights",
            "8",
            "--samples",
            "32",
            "--criteria",
            "magnitude",
            "--loss",
            "mse",
        ],
        "one target per output",
    )


def test_deeply_nested_recipe_is_refused(tmp_path):  # recipes: steps: [[[[...]]]] 2000 deep
    (tmp_path / "r.yaml").write_text("steps: " + "[" * 2000 + "]" * 2000 + "\n")
    refused(["run", tmp_path / "r.yaml", "--check"], "nested too deeply")


def test_yaml_reader_error_is_one_line(tmp_path):  # recipes: a NUL byte in the file
    (tmp_path / "r.yaml").write_text("\x00\x01")
    refused(["run", tmp_path / "r.yaml", "--check"], "not valid YAML")


def test_empty_label_array_is_refused(tmp_path):
    """data: y_train int8[0] with 12 x_train rows: was numpy's zero-size reduction error."""
    np.savez(
        tmp_path / "d.npz",
        x_train=np.zeros((12, 9), np.float32),
        y_train=np.zeros(0, np.int8),
        x_test=np.zeros((6, 9), np.float32),
        y_test=np.zeros(6, np.int64),
    )
    refused(["data", "check", tmp_path / "d.npz"], "12 samples but y_train has 0")


def test_corrupt_gzip_idx_is_refused(tmp_path):
    """data: an IDX .gz whose deflate stream is damaged: was zlib.error."""
    from brainsurgeon.data.sources import IDX_FILES

    arr = np.arange(160, dtype=np.uint8).reshape(10, 4, 4)
    body = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 4, 4) + arr.tobytes()
    for stem in IDX_FILES.values():
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(body, mtime=0))
    blob = bytearray(gzip.compress(body, mtime=0))
    blob[14] ^= 0xFF  # inside the deflate stream
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(bytes(blob))
    refused(["data", "check", tmp_path], "corrupt gzip")


@pytest.mark.parametrize("text, fragment", [("", "not valid JSON"), ("null", "not a JSON object")])
def test_bad_metrics_json_is_refused(trained_run, tmp_path, text, fragment):
    """files: metrics.json empty (JSONDecodeError) or ``null`` (TypeError in inspect)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "metrics.json").write_text(text)
    refused(["inspect", run], "metrics.json", fragment)


def test_tampered_bsc_tensor_shape_is_refused(bsc, tmp_path):
    """files: a header whose tensor shape was edited, re-packed with valid checksums: was a
    reshape RuntimeError, or a 9-line torch overflow message for a huge shape."""
    from brainsurgeon.container.format import pack, unpack

    c = unpack(bsc.read_bytes())
    for shape in ([16], [2**63, 1]):
        header = json.loads(json.dumps({k: v for k, v in c.header.items() if k != "sections"}))
        header["tensors"][-1]["shape"] = shape
        path = tmp_path / "t.bsc"
        path.write_bytes(pack(header, dict(c.sections)))
        refused(["inspect", path], "in the header but the model's is")


def test_bit_flip_inside_a_compressed_npz_is_refused(tmp_path):
    """data: a flipped bit in the deflate stream of a savez_compressed archive: was zlib.error
    (the zip's CRC is only checked after decompressing)."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        x_train=np.zeros((12, 16), np.float32),
        y_train=np.arange(12) % 2,
        x_test=np.zeros((6, 16), np.float32),
        y_test=np.arange(6) % 2,
    )
    blob = bytearray(buf.getvalue())
    found = False
    for i in range(40, len(blob) - 200, max(1, (len(blob) - 240) // 25)):
        trial = bytearray(blob)
        trial[i] ^= 0x10
        (tmp_path / "d.npz").write_bytes(bytes(trial))
        res = run_main(["data", "check", str(tmp_path / "d.npz"), "--quiet"])
        assert res.error is None and res.code in (0, 2), (i, res.error, res.stderr)
        found = found or "cannot read" in res.stderr
    assert found


@pytest.mark.parametrize(
    "field, value",
    [
        ("normalization", -1),
        ("normalization", {"mean": 0, "std": 0}),
        ("data", [1]),
        ("data", {"name": "digits", "bogus": 1}),
    ],
)
def test_bad_recorded_data_fields_are_refused(trained_run, tmp_path, field, value):
    """files: config.json (or a .bsc header) with ``"normalization": -1``: was
    "'int' object is not subscriptable" in load_data."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg[field] = value
    (run / "config.json").write_text(json.dumps(cfg))
    refused(["evaluate", run], "the run is corrupt")


def _edit_config(run, **fields):
    cfg = json.loads((run / "config.json").read_text())
    for key, value in fields.items():
        target = cfg
        *parents, last = key.split("__")
        for part in parents:
            target = target[part]
        target[last] = value
    (run / "config.json").write_text(json.dumps(cfg))


def test_format_version_of_another_type_is_refused(trained_run, tmp_path):
    """files: config.json with ``"format_version": []``: was "'>' not supported"."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _edit_config(run, format_version=[])
    refused(["evaluate", run], "format_version is []")


def test_model_spec_torch_cannot_build_is_one_line(trained_run, tmp_path):
    """files: config.json whose model spec makes torch raise a 9-line C++ error (an integer
    overflow in a layer size): now its first line only."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _edit_config(run, model__num_classes=2**63)
    line = refused(["export", run, "--out", tmp_path / "m.bsc"], "for model 'lenet300'")
    assert "frame #" not in line
    assert not (tmp_path / "m.bsc").exists()


def test_kmeans_indices_out_of_range_are_refused(trained_run, tmp_path):
    """files: a k-means run whose model.safetensors was changed (and its checksum updated by
    hand) so an index points past the codebook: was an IndexError at the first forward."""
    import hashlib

    from safetensors.torch import load_file, save_file

    run = tmp_path / "q"
    assert (
        run_main(["quantize", str(trained_run), "--bits", "2", "--out", str(run), "--quiet"]).code
        == 0
    )
    tensors = load_file(str(run / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("indices"))
    tensors[key].view(-1)[0] = -32760
    save_file(tensors, str(run / "model.safetensors"), metadata={"format": "brainsurgeon-run"})
    sha = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    _edit_config(run, weights_sha256=sha)
    refused(["evaluate", run], "indices hold values outside")


def test_uint8_label_255_counts_256_classes(tmp_path):
    """data: an .npz with uint8 labels including 255: ``max() + 1`` overflowed to 0 in uint8,
    the model got 2 outputs and training raised "Target 255 is out of bounds"."""
    from brainsurgeon.data import load_data

    y = np.arange(12, dtype=np.uint8) % 3
    y[0] = 255
    np.savez(
        tmp_path / "d.npz",
        x_train=np.zeros((12, 16), np.float32),
        y_train=y,
        x_test=np.zeros((6, 16), np.float32),
        y_test=np.zeros(6, np.uint8),
    )
    assert load_data(str(tmp_path / "d.npz"), progress=False).num_classes == 256


@pytest.mark.parametrize("field, value", [("history", 1e300), ("edits", {}), ("model", [])])
def test_config_fields_of_the_wrong_type_are_refused(trained_run, tmp_path, field, value):
    """files: config.json with ``"history": 1e999`` (read as inf): was "'float' object is not
    iterable" in inspect."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _edit_config(run, **{field: value})
    refused(["inspect", run], f"field {field!r} holds")


def test_unknown_mlp_option_in_a_recipe_is_refused(tmp_path):
    """recipes: ``model: mlp:64-8-10`` with ``model_kwargs: {"BÐ3F": -7941}``: was MLP's
    TypeError "unexpected keyword argument" at the start of the run."""
    (tmp_path / "r.yaml").write_text(
        "data: digits\nmodel: mlp:64-8-10\nmodel_kwargs: {bogus: 1}\n"
        "steps: [{train: {epochs: 1}}]\n"
    )
    refused(["run", tmp_path / "r.yaml", "--out", tmp_path / "o"], "bad options", "'bogus'")
    assert not (tmp_path / "o").exists()


def test_bare_yaml_tag_is_refused(tmp_path):
    """recipes: a file holding only ``!!int``: was IndexError inside the YAML reader."""
    (tmp_path / "r.yaml").write_text("!!int")
    refused(["run", tmp_path / "r.yaml", "--check"], "not valid YAML")


def test_binary_recipe_file_is_refused(tmp_path):
    """cli: run FILE.npz --check: was UnicodeDecodeError reading the recipe."""
    np.savez(tmp_path / "d.npz", x=np.arange(300.0))
    refused(["run", tmp_path / "d.npz", "--check"], "not a UTF-8 text file")


@pytest.mark.parametrize(
    "command, extra",
    [
        ("compare", ["--criteria", "magnitude", "--sparsities", "0.5", "--scheme", "uniform"]),
        ("sensitivity", ["--sparsities", "0.5", "--loss", "mse"]),
    ],
)
def test_experiment_refused_in_its_first_cell_leaves_no_folder(
    trained_run, tmp_path, command, extra
):
    """cli: compare ... --scheme uniform, sensitivity ... --loss mse: refused while computing
    the first cell, after OUT/experiment.json (and the baseline cell) had been written."""
    out = tmp_path / "out"
    refused([command, trained_run, "--samples", "32", "--out", out, *extra])
    assert not out.exists()


def test_force_never_deletes_the_current_folder(trained_run, tmp_path, monkeypatch):
    """cli: prune RUN --out . --force: the pruning store ran shutil.rmtree('.'), deleting
    everything in the current folder before failing with OSError 'Invalid argument: .'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    refused(["prune", trained_run, "--out", ".", "--samples", "32", "--force"], "current folder")
    refused(["train", "--epochs", "0", "--out", str(tmp_path), "--force"], "current folder")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def _repacked(bsc, tmp_path, edit):
    from brainsurgeon.container.format import pack, unpack

    c = unpack(bsc.read_bytes())
    header = json.loads(json.dumps({k: v for k, v in c.header.items() if k != "sections"}))
    edit(header)
    path = tmp_path / "t.bsc"
    path.write_bytes(pack(header, dict(c.sections)))
    return path


def test_edited_display_fields_of_a_bsc_header_are_refused(bsc, tmp_path):
    """files: a re-packed header with ``"nonzeros": ""`` in a tensor record: was int('')
    ValueError while inspect built the byte table."""
    path = _repacked(bsc, tmp_path, lambda h: h["tensors"][0].update(nonzeros=""))
    refused(["inspect", path], "tensor records are damaged")


def test_null_recorded_accuracy_is_shown_without_it(bsc, tmp_path):
    """files: a re-packed header with ``"test_accuracy": null``: was 100 * None in inspect."""
    path = _repacked(
        bsc, tmp_path, lambda h: h.setdefault("metrics", {}).update(test_accuracy=None)
    )
    res = run_main(["inspect", str(path), "--quiet"])
    assert res.code == 0 and res.error is None, (res.stderr, res.error)


def test_entropy_decoder_panic_is_an_encoding_error(monkeypatch):
    """files: an ans stream whose words made constriction's Rust code panic ("capacity
    overflow"): pyo3's PanicException derives from BaseException and escaped every handler."""
    pytest.importorskip("constriction", reason="the ans coder needs constriction")
    import constriction

    from brainsurgeon.encoding import entropy
    from brainsurgeon.errors import EncodingError

    class PanicException(BaseException):  # the shape of pyo3_runtime.PanicException
        pass

    symbols = np.array([0, 1, 2, 1, 0, 2, 2, 1] * 8, dtype=np.uint32)
    data = entropy.encode(symbols, 3)
    assert (entropy.decode(data, 3, len(symbols)) == symbols).all()

    def panic(*args):
        raise PanicException("capacity overflow")

    monkeypatch.setattr(constriction.stream.stack, "AnsCoder", panic)
    with pytest.raises(EncodingError, match="capacity overflow"):
        entropy.decode(data, 3, len(symbols))


def test_dropout_out_of_range_is_refused(tmp_path):
    """cli: ``train --model mlp:64-8-10 --model-kwargs '{"dropout":2}'``: was torch's
    ValueError traceback from ``MLP.__init__`` (final-code CLI run, 1 of 10,000)."""
    out = tmp_path / "o"
    argv = ["train", "--model", "mlp:64-8-10", "--epochs", "1", "--out", out]
    refused([*argv, "--model-kwargs", '{"dropout":2}'], "bad options", "between 0 and 1")
    assert not out.exists()


def test_quantize_twice_in_a_recipe_is_refused_before_training(tmp_path):
    """recipes: ``steps: [train, quantize: {}, quantize: {}]``: trained, then failed at the
    second quantize and kept the unfinished run (final-code recipe run, 3 of 10,000); now the
    order is checked before any step runs."""
    (tmp_path / "r.yaml").write_text(
        "data: digits\nmodel: mlp:64-8-10\nreport: false\n"
        "steps: [{train: {epochs: 1}}, {quantize: {}}, {quantize: {}}]\n"
    )
    refused(["run", tmp_path / "r.yaml", "--out", tmp_path / "o"], "steps[2].quantize", "twice")
    assert not (tmp_path / "o").exists()


def test_quantize_of_other_layers_in_a_second_step_is_allowed(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "data: digits\nmodel: mlp:64-8-10\nreport: false\nsteps: [{train: {epochs: 1}}, "
        "{quantize: {layers: [fc1]}}, {quantize: {layers: [fc2]}}]\n"
    )
    res = run_main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"), "--quiet"])
    assert res.code == 0, res.stderr


def test_a_step_failing_after_others_says_they_are_kept(tmp_path):
    """A failure at run time (not found by validation) keeps the finished steps and says how
    to continue after them."""
    (tmp_path / "r.yaml").write_text(
        "data: digits\nmodel: mlp:64-8-10\nreport: false\nsteps: [{train: {epochs: 1}}, "
        "{quantize: {layers: [fc1]}}, {quantize: {layers: ['fc*']}}]\n"
    )
    line = refused(["run", tmp_path / "r.yaml", "--out", tmp_path / "o"], "already quantized")
    assert "--resume" in line and "kept" in line
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"steps"}


@pytest.mark.parametrize("spec", ["mlp:64-4000000000-10", "mlp:64-100000000000000-10"])
def test_a_model_too_big_for_memory_is_refused_before_allocating(tmp_path, spec):
    out = tmp_path / "o"
    refused(["train", "--model", spec, "--epochs", "1", "--out", out], "free memory")
    assert not out.exists()


def test_bsc_header_naming_a_huge_model_is_refused(bsc, tmp_path):
    """files: a re-packed header whose model spec asks for terabytes of weights: was an
    attempt to allocate them."""
    from brainsurgeon.container.format import pack, unpack

    c = unpack(bsc.read_bytes())
    header = json.loads(json.dumps({k: v for k, v in c.header.items() if k != "sections"}))
    header["model"]["name"] = "mlp:64-100000000000-10"
    path = tmp_path / "t.bsc"
    path.write_bytes(pack(header, dict(c.sections)))
    refused(["inspect", path], "cannot rebuild the model", "free memory")


def test_prune_out_a_file_with_force_is_refused(trained_run, tmp_path):
    """cli: ``prune RUN --out FILE --force``: was NotADirectoryError from clearing the round
    store (final-code CLI run, 2 of 10,000); the file is kept."""
    (tmp_path / "file.txt").write_text("x")
    refused(["prune", trained_run, "--out", tmp_path / "file.txt", "--samples", "32", "--force"],
            "is a file, not a run directory")  # fmt: skip
    assert (tmp_path / "file.txt").read_text() == "x"


def test_huge_shift_is_refused(tmp_path):
    """cli: ``train --shift 99999999999999999999``: was torch's "Overflow when unpacking long
    long" ValueError in the augmentation (final-code CLI run, 1 of 10,000)."""
    out = tmp_path / "o"
    argv = ["train", "--model", "mlp:64-8-10", "--epochs", "1", "--out", out]
    refused([*argv, "--shift", "99999999999999999999"], "shift must be 0..1024 pixels")
    assert not out.exists()
