"""Compressed model files: every compression loads back to identical outputs, the byte table
adds up to the file size, and damaged files fail with one line naming the damage."""

from __future__ import annotations

import copy
import json
import struct
import zlib

import numpy as np
import pytest
import torch

import brainsurgeon as bs
from brainsurgeon.container import CompressedFileError, export, read
from brainsurgeon.container.format import FORMAT_VERSION, MAGIC, pack, unpack
from brainsurgeon.container.values import VALUE_MODELS, fit_all
from brainsurgeon.models import build_model
from brainsurgeon.training import TrainConfig, fit
from conftest import run_cli

METHODS = [
    None,
    ("kmeans", {"bits": 3}),
    ("uniform", {"bits": 4}),
    ("uniform", {"bits": 6, "granularity": "per-tensor", "symmetric": True}),
    ("binary", {}),
    ("ternary", {"granularity": "per-tensor"}),
    ("gptq", {"bits": 4}),
    ("product", {"bits": 2, "block_width": 4}),
    ("residual", {"bits": 2, "block_width": 4, "stages": 2}),
]


@pytest.fixture(scope="module")
def pruned(digits):
    torch.manual_seed(0)
    model = build_model("mlp:64-32-16-10", digits.input_shape, digits.num_classes)
    fit(model, digits, TrainConfig(epochs=2), progress=False)
    bs.prune(model, bs.PruneConfig(criterion="magnitude", amount=0.7), digits, progress=False)
    return model


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def dense(digits):
    torch.manual_seed(1)
    model = build_model("mlp:64-32-16-10", digits.input_shape, digits.num_classes)
    fit(model, digits, TrainConfig(epochs=1), progress=False)
    return model


@pytest.mark.parametrize("masked", [True, False], ids=["pruned", "dense"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m[0] if m else "no-quantizer")
def test_every_compression_loads_back_to_identical_outputs(
    method, masked, pruned, dense, digits, tmp_path
):
    model = copy.deepcopy(pruned if masked else dense)
    if method is not None:
        bs.quantize(model, bs.quant_config(method[0], **method[1]), digits, progress=False)
    result = export(model, tmp_path / "m.bsc")
    if method and method[0] in ("product", "residual"):
        assert {r["values"] for r in result.rows if r["tensor"] == "fc1.weight"} == {"vector"}
    loaded = read(tmp_path / "m.bsc").model
    x = digits.test.x[:64]
    assert torch.equal(_outputs(model, x), _outputs(loaded, x))
    on_disk = (tmp_path / "m.bsc").stat().st_size
    assert result.file_bytes == on_disk
    assert sum(r["bytes"] for r in result.rows) + result.header_bytes + 52 == on_disk
    assert not any("parametrizations" in k for k in loaded.state_dict())


def test_quantized_files_are_smaller_than_masks_alone(pruned, digits, tmp_path):
    plain = export(pruned, tmp_path / "a.bsc").file_bytes
    model = copy.deepcopy(pruned)
    bs.quantize(model, bs.quant_config("kmeans", bits=3), digits, progress=False)
    shared = export(model, tmp_path / "b.bsc")
    assert shared.file_bytes < 0.6 * plain
    fc1 = next(r for r in shared.rows if r["tensor"] == "fc1.weight")
    assert fc1["values"] == "codebook" and fc1["bits_per_weight"] < 7  # 3-bit codes + zeros


def test_factorized_and_hashed_models_round_trip(digits, tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp:64-48-10", digits.input_shape, digits.num_classes)
    fit(model, digits, TrainConfig(epochs=1), progress=False)
    bs.factorize(model, bs.FactorizeConfig(rank=4), digits)
    export(model, tmp_path / "f.bsc")
    x = digits.test.x[:16]
    assert torch.equal(_outputs(model, x), _outputs(read(tmp_path / "f.bsc").model, x))
    hashed = build_model("mlp:64-32h4-10,hash_seed=3", digits.input_shape, digits.num_classes)
    export(hashed, tmp_path / "h.bsc")
    assert torch.equal(_outputs(hashed, x), _outputs(read(tmp_path / "h.bsc").model, x))


def test_value_models_are_exact_and_refuse_what_they_cannot_code():
    rng = np.random.default_rng(0)
    levels = rng.normal(size=7).astype(np.float32)
    v = levels[rng.integers(0, 7, 500)]
    names = {f.model for f in fit_all(v, np.arange(500), (10, 50), None)}
    assert {"codebook", "rows", "float32"} <= names
    noise = rng.normal(size=70_000).astype(np.float32)
    assert VALUE_MODELS.get("codebook").fit(noise, np.arange(70_000), (70_000,), None) is None
    scale = np.array([0.1, 0.2], dtype=np.float32)
    zero = np.array([3.0, 0.0], dtype=np.float32)
    q = rng.integers(0, 8, 40).astype(np.float32)
    w = (q - zero[np.repeat([0, 1], 20)]) * scale[np.repeat([0, 1], 20)]
    keep = w != 0
    hint = {"scale": scale, "zero_point": zero, "bits": 3, "qmin": 0}
    pos = np.flatnonzero(keep)
    fits = {f.model: f for f in fit_all(w[keep], pos, (2, 20), hint)}
    assert fits["affine"].streams["codes"][1] == 8  # 3-bit codes, exact
    assert VALUE_MODELS.get("affine").fit(w[keep], pos, (2, 20), None) is None


def test_export_of_a_run_keeps_its_config_and_loads_through_load_run(trained_run, tmp_path):
    out = tmp_path / "dense.bsc"
    result = bs.export(trained_run, out)
    assert result.ratio == pytest.approx(result.fp32_bytes / out.stat().st_size)
    run = bs.load_run(out)
    assert run.config["data"]["name"] == "digits"
    assert run.metrics["test_accuracy"] > 0.5
    original = bs.load(trained_run)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(_outputs(original, x), _outputs(run.model, x))


# ---------------------------------------------------------------- damaged and foreign files


@pytest.fixture(scope="module")
def good_file(tmp_path_factory, pruned):
    path = tmp_path_factory.mktemp("bsc") / "good.bsc"
    export(pruned, path)
    return path.read_bytes()


def _error(data: bytes, tmp_path) -> str:
    path = tmp_path / "bad.bsc"
    path.write_bytes(data)
    with pytest.raises(CompressedFileError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_truncated_wrong_magic_and_newer_version_are_named(good_file, tmp_path):
    assert "truncated" in _error(good_file[:-100], tmp_path)
    assert "truncated" in _error(good_file[:30], tmp_path)
    assert "magic" in _error(b"PK\x03\x04" + good_file[4:], tmp_path)
    assert "magic" in _error(b"", tmp_path)
    newer = good_file[:8] + struct.pack("<I", FORMAT_VERSION + 1) + good_file[12:]
    assert "upgrade brainsurgeon" in _error(newer, tmp_path)


@pytest.mark.parametrize("where", [0.001, 0.3, 0.6, 0.9, 0.999])
def test_a_flipped_byte_anywhere_is_caught(good_file, tmp_path, where):
    data = bytearray(good_file)
    i = min(int(where * len(data)), len(data) - 1)
    data[i] ^= 0x40
    message = _error(bytes(data), tmp_path)
    assert any(w in message for w in ("magic", "header", "section", "checksum", "version"))


def _repack(good: bytes, edit) -> bytes:
    container = unpack(good)
    header = {k: v for k, v in container.header.items() if k != "sections"}
    sections = dict(container.sections)
    edit(header, sections)
    return pack(header, sections)


def test_a_header_that_does_not_match_its_sections_is_named(good_file, tmp_path):
    def drop_tensor(header, sections):
        header["tensors"] = header["tensors"][1:]

    assert "missing" in _error(_repack(good_file, drop_tensor), tmp_path)

    def drop_section(header, sections):
        name = next(k for k in sections if k.endswith("/raw"))
        del sections[name]

    assert "is missing" in _error(_repack(good_file, drop_section), tmp_path)

    def shrink(header, sections):
        rec = next(t for t in header["tensors"] if t["encoding"] == "weight")
        rec["shape"] = [rec["shape"][0] + 1, *rec["shape"][1:]]

    message = _error(_repack(good_file, shrink), tmp_path)
    assert "tensor" in message


def test_length_table_and_crc_are_checked_before_decoding(good_file):
    head_len = struct.unpack_from("<I", good_file, 12)[0]
    header = json.loads(zlib.decompress(good_file[20 : 20 + head_len]))
    assert good_file[:8] == MAGIC
    assert zlib.crc32(good_file[20 : 20 + head_len]) == struct.unpack_from("<I", good_file, 16)[0]
    assert sum(s["length"] for s in header["sections"]) + 20 + head_len + 32 == len(good_file)


def test_cli_export_prints_the_byte_table_and_evaluate_reads_the_file(trained_run, tmp_path):
    out = tmp_path / "m.bsc"
    proc = run_cli("export", str(trained_run), "--out", str(out), check=True)
    assert f"{out.stat().st_size:,} bytes on disk" in proc.stdout
    assert "bits/index" in proc.stdout and "stored as fp32" in proc.stdout
    again = run_cli("export", str(trained_run), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    ev = run_cli("evaluate", str(out), "--json", check=True)
    assert json.loads(ev.stdout)["accuracy"] > 0.5
    out.write_bytes(out.read_bytes()[:-10])
    bad = run_cli("evaluate", str(out))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_any_flip_or_truncation_is_refused_never_a_wrong_model(good_file, tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
    @hypothesis.given(st.integers(0, len(good_file) - 1), st.integers(1, 255), st.booleans())
    def check(i, bit, cut):
        data = (
            good_file[:i]
            if cut
            else good_file[:i] + bytes([good_file[i] ^ bit]) + good_file[i + 1 :]
        )
        path = tmp_path / "fuzz.bsc"
        path.write_bytes(data)
        with pytest.raises(CompressedFileError) as info:
            read(path)
        assert "\n" not in str(info.value)

    check()
