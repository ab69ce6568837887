"""Data loaders: digits split, IDX reader, user folders and .npz files, and their errors."""

from __future__ import annotations

import gzip
import io
import pickle
import struct

import numpy as np
import pytest

from brainsurgeon.data import load_data, read_idx
from brainsurgeon.data.sources import _NumpyOnlyUnpickler
from brainsurgeon.errors import DataError


def write_idx(path, array: np.ndarray, *, gz: bool = False, truncate: int = 0) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + array.tobytes()
    raw = raw[: len(raw) - truncate] if truncate else raw
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_idx_folder(folder, *, gz: bool, n_train: int = 60, n_test: int = 20):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    parts = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in parts.items():
        write_idx(folder / (name + (".gz" if gz else "")), arr, gz=gz)
    return parts


def test_digits_split_is_fixed_and_normalised(digits):
    again = load_data("digits", seed=0, progress=False)
    assert digits.sizes() == {"train": 1257, "val": 269, "test": 271}
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert np.array_equal(digits.test.y.numpy(), again.test.y.numpy())
    # statistics come from the training split: it is standardised, the others only nearly
    assert abs(float(digits.train.x.mean())) < 1e-5
    assert abs(float(digits.train.x.std()) - 1) < 1e-3
    other = load_data("digits", seed=1, progress=False)
    assert not np.array_equal(digits.test.y.numpy(), other.test.y.numpy())


def test_given_normalisation_is_reused():
    d = load_data("digits", normalization={"mean": 0.0, "std": 1.0}, progress=False)
    assert float(d.train.x.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr, gz=gz)
    assert np.array_equal(read_idx(tmp_path / "a"), arr)


def test_idx_reader_errors(tmp_path):
    arr = np.zeros((5, 4, 4), dtype=np.uint8)
    write_idx(tmp_path / "t", arr, truncate=3)
    with pytest.raises(
        DataError, match=r"truncated or padded: header dims \(5, 4, 4\) need 80 bytes"
    ):
        read_idx(tmp_path / "t")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(tmp_path / "bad.gz")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_loads_with_held_out_validation(tmp_path, gz):
    parts = make_idx_folder(tmp_path / "mnist", gz=gz)
    d = load_data(str(tmp_path / "mnist"), progress=False)
    assert d.sizes() == {"train": 50, "val": 10, "test": 20}
    assert d.input_shape == (1, 28, 28)
    assert np.array_equal(d.test.y.numpy(), parts["t10k-labels-idx1-ubyte"].astype(np.int64))


def test_idx_folder_missing_file(tmp_path):
    make_idx_folder(tmp_path / "m", gz=False)
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_data(str(tmp_path / "m"), progress=False)


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def good_arrays(n=30):
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.random((n, 16), dtype=np.float32),
        "y_train": rng.integers(0, 3, n),
        "x_test": rng.random((10, 16), dtype=np.float32),
        "y_test": rng.integers(0, 3, 10),
    }


def test_npz_loads_and_reshapes(tmp_path):
    d = load_data(save_npz(tmp_path / "d.npz", **good_arrays()), progress=False)
    assert d.input_shape == (1, 4, 4) and d.num_classes == 3
    assert d.sizes() == {"train": 25, "val": 5, "test": 10}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"x_train": np.zeros((30, 2, 3, 4, 5), np.float32)},
            r"x_train has shape \(30, 2, 3, 4, 5\)",
        ),
        ({"y_train": np.zeros(29, np.int64)}, "x_train has 30 samples but y_train has 29"),
        ({"y_test": np.full(10, 7)}, "y_test has label 7 never seen in y_train"),
        ({"y_train": np.full(30, -1)}, "negative label -1"),
        (
            {"y_test": np.zeros(10, np.float32)},
            "y_test has shape .* expected a 1-D integer label vector",
        ),
        ({"x_test": np.zeros((10, 25), np.float32)}, r"sample shape \(1, 5, 5\) but x_train has"),
        ({"x_train": np.full((30, 16), np.nan, np.float32)}, "NaN or infinite"),
    ],
)
def test_npz_validation_errors(tmp_path, change, message):
    arrays = {**good_arrays(), **change}
    with pytest.raises(DataError, match=message):
        load_data(save_npz(tmp_path / "d.npz", **arrays), progress=False)


def test_npz_missing_keys_and_corrupt_file(tmp_path):
    arrays = good_arrays()
    del arrays["y_test"]
    with pytest.raises(DataError, match=r"missing arrays \['y_test'\]"):
        load_data(save_npz(tmp_path / "d.npz", **arrays), progress=False)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="cannot read .*broken.npz as .npz"):
        load_data(str(tmp_path / "broken.npz"), progress=False)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown data set 'cifar'; valid: digits, mnist"):
        load_data("cifar", progress=False)


def test_mnist_unpickler_refuses_code():
    payload = pickle.dumps(print)  # a global that is not a numpy array
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle builtins.print"):
        _NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(_NumpyOnlyUnpickler(io.BytesIO(pickle.dumps((arr, arr)))).load()[0], arr)


def test_a_deleted_data_file_is_reported_as_missing(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*gone.npz"):
        load_data(str(tmp_path / "gone.npz"), progress=False)
