"""Fuzz users' data files: ``.npz`` archives and MNIST IDX folders (gzipped or not).

Arrays get random shapes (empty splits included), dtypes (bool, float16, complex, strings,
...), NaN / inf, labels out of range or negative, missing or extra keys; files get truncated,
bit-flipped or wrapped in broken gzip. ``brainsurgeon data check`` must describe the data or
refuse it in one line; some accepted ones are also trained on (1 epoch) and evaluated.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_support import Tally, example_dir, fuzz_settings, judge, run_main  # noqa: E402

TALLY = Tally("data")
KEYS = ["x_train", "y_train", "x_test", "y_test", "x_val", "y_val"]
DTYPES = [
    "float32",
    "float64",
    "float16",
    "int64",
    "int32",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "<U2",
    "datetime64[s]",
]
LABELS = [0, 1, 2, 9, 255, -1, 10**9, 2**62]
SPECIALS = [0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e38, 1e-40]


X_SHAPES = [(16,), (4, 4), (1, 4, 4), (9,), (), (2, 3), (1, 1, 1, 2)]


@st.composite
def arrays(draw, key: str, n: int, sample: tuple) -> np.ndarray:
    """One array of ``n`` samples: mostly the right kind for ``key``, sometimes anything."""
    good = draw(st.integers(0, 9)) > 0
    if key.startswith("x"):
        shape = (n, *sample) if good else draw(st.sampled_from([(n, *s) for s in X_SHAPES] + [()]))
        dtype = "float32" if good else draw(st.sampled_from(DTYPES))
    else:
        shape = draw(st.sampled_from([(n,), (n, 1), (n, 2), ()])) if not good else (n,)
        dtype = draw(st.sampled_from(["int64", "uint8", "int8"] if good else DTYPES))
    size = int(np.prod(shape)) if shape else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if key.startswith("y") and np.issubdtype(np.dtype(dtype), np.integer):
        values = rng.integers(0, 3, size).astype(np.float64)
    else:
        values = rng.random(size)
    if draw(st.integers(0, 5)) == 0 and size:
        special = LABELS if key.startswith("y") else SPECIALS
        values[draw(st.integers(0, size - 1))] = draw(st.sampled_from(special))
    with np.errstate(all="ignore"):
        try:
            return np.asarray(values, dtype=np.float64).astype(dtype).reshape(shape)
        except (ValueError, TypeError, OverflowError):
            return values.reshape(shape)


@st.composite
def npz_files(draw) -> tuple[bytes, str]:
    """The bytes of an .npz (maybe compressed, truncated or flipped) and a description."""
    keys = [k for k in KEYS if draw(st.integers(0, 19)) > (0 if k[2:] != "val" else 12)]
    keys += draw(st.lists(st.sampled_from(["x", "labels", "x_train.npy"]), max_size=1))
    sample = draw(st.sampled_from(X_SHAPES[:4]))
    sizes = {"train": 12, "test": 6, "val": 4}
    if draw(st.integers(0, 5)) == 0:
        sizes[draw(st.sampled_from(sorted(sizes)))] = draw(st.sampled_from([0, 1, 5]))
    content = {}
    for k in keys:
        split = k.split("_")[1].split(".")[0] if "_" in k else "train"
        content[k] = draw(arrays(k if k in KEYS else "x_train", sizes[split], sample))
    buf = io.BytesIO()
    saver = np.savez_compressed if draw(st.booleans()) else np.savez
    saver(buf, **content)
    data = _damage(draw, buf.getvalue())
    desc = {k: f"{v.dtype}{list(v.shape)}" for k, v in content.items()}
    return data, f"npz {desc} {saver.__name__} damaged={data != buf.getvalue()}"


def _damage(draw, data: bytes) -> bytes:
    how = draw(st.sampled_from(["none"] * 6 + ["cut", "flip"]))
    if how == "cut" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
    return data


def idx_bytes(arr: np.ndarray, code: int) -> bytes:
    dims = arr.shape
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + arr.tobytes()


@st.composite
def idx_folders(draw) -> tuple[dict[str, bytes], str]:
    """The four MNIST IDX files (some missing, mis-shaped, gzipped, truncated)."""
    from brainsurgeon.data.sources import IDX_FILES

    files, notes = {}, []
    for key, stem in IDX_FILES.items():
        if draw(st.integers(0, 15)) == 0:
            notes.append(f"{key}:missing")
            continue
        n = 10 if "train" in key else 4
        if draw(st.integers(0, 6)) == 0:
            n = draw(st.sampled_from([0, 1, 3]))
        arr = draw(arrays(key, n, (4, 4)))
        code = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09}.get(arr.dtype, 0x0D)
        if arr.dtype == np.int64:
            arr, code = arr.astype(">i4"), 0x0C
        elif arr.dtype == np.float32 and draw(st.booleans()):
            arr, code = (arr * 255).astype(np.uint8), 0x08
        elif code == 0x0D:
            arr = (
                np.asarray(arr, dtype=np.float64).astype(">f4")
                if arr.dtype.kind in "biuf"
                else np.zeros(arr.shape, ">f4")
            )
        code = draw(st.sampled_from([code, code, code, 0x0C, 0x0E, 0x07]))
        data = idx_bytes(arr, code)
        gz = draw(st.booleans())
        if gz:
            data = gzip.compress(data, mtime=0)
        data = _damage(draw, data)
        files[stem + (".gz" if gz else "")] = data
        notes.append(f"{key}:{arr.dtype}{list(arr.shape)} code={code:#x} gz={gz} bytes={len(data)}")
    return files, "idx " + "; ".join(notes)


counter = [0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    yield tmp_path_factory.mktemp("fuzz-data")
    TALLY.write()


def check_data(path: Path, work: Path, train: bool) -> tuple[str, str]:
    verdict = judge(run_main(["data", "check", str(path), "--quiet"]), quiet=True, work=work)
    if verdict[0] == "accepted" and train:
        out = work / "run"
        argv = [
            "train",
            "--data",
            str(path),
            "--model",
            "lenet300",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
        verdict = judge(run_main(argv), quiet=True, work=work, outputs=(out,))
        if verdict[0] == "accepted":
            verdict = judge(run_main(["evaluate", str(out), "--quiet"]), quiet=True, work=work)
    return verdict


@fuzz_settings(default=40, share=0.6)
@given(npz=npz_files(), train=st.integers(0, 4))
def test_npz_files_load_or_refuse_in_one_line(npz, train, root):
    data, desc = npz
    with example_dir(root, counter) as work:
        path = work / "data.npz"
        path.write_bytes(data)
        verdict = check_data(path, work, train == 0)
    TALLY.check(verdict, desc)


@fuzz_settings(default=20, share=0.4)
@given(folder=idx_folders(), train=st.integers(0, 4))
def test_idx_folders_load_or_refuse_in_one_line(folder, train, root):
    files, desc = folder
    with example_dir(root, counter) as work:
        (work / "mnist").mkdir()
        for name, data in files.items():
            (work / "mnist" / name).write_bytes(data)
        verdict = check_data(work / "mnist", work, train == 0)
    TALLY.check(verdict, desc)


def test_a_good_npz_is_accepted_and_trains(tmp_path):
    """The generators' starting point is valid: the fuzz is not all refusals."""
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.random((12, 16), np.float32),
        y_train=np.arange(12) % 3,
        x_test=rng.random((6, 16), np.float32),
        y_test=np.arange(6) % 3,
    )
    assert check_data(tmp_path / "d.npz", tmp_path, True)[0] == "accepted"
