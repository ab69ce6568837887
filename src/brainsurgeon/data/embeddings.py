"""Text data for an embedding model: token tensors in, the original model's embeddings out.

A sentence-embedding model has no labels to compress against. Its targets are the embeddings
the *original* model gives each sentence, so every statistic, criterion, fine-tuning and
evaluation works with the ``cosine`` loss (self-distillation, ``1 - cos(z, y)``)::

    x (N, 2, L) int64   token ids and attention mask (:func:`brainsurgeon.data.text.tokenize`)
    y (N, D) float32    the teacher's embeddings of the same sentences

Splits are chosen by seed from one text file: ``train`` (calibration / fine-tuning), ``val``
and ``test`` (the evaluation sentences, never used for calibration). Tokens and teacher
embeddings are computed once and cached under ``cache_dir()``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from .core import DataBundle, Dataset

TEXT_PREFIX = "text:"


@torch.no_grad()
def teacher_embeddings(
    teacher: nn.Module, x: torch.Tensor, *, batch_size: int = 64, progress: bool = False
) -> torch.Tensor:
    """``teacher(x)`` in eval mode, in batches: (N, D) float32."""
    import sys

    from tqdm.auto import tqdm

    was = teacher.training
    teacher.eval()
    out = []
    starts = range(0, len(x), batch_size)
    show = progress and sys.stderr.isatty()
    for start in tqdm(starts, desc="teacher embeddings", leave=False, disable=not show):
        out.append(teacher(x[start : start + batch_size]).float())
    teacher.train(was)
    return torch.cat(out)


def embedding_bundle(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    calib: int,
    val: int,
    test: int,
    seed: int | None = 0,
    name: str = "text",
    spec: dict[str, Any] | None = None,
) -> DataBundle:
    """Disjoint ``test`` (``test`` samples), ``val`` and ``train`` (``calib``) splits of
    ``(x, y)``, drawn by ``seed`` (None: in order, the samples were drawn already)."""
    n = len(x)
    order = sample_order(n, calib + val + test, seed, name, (calib, val, test))
    order = torch.from_numpy(order)
    parts = order[:test], order[test : test + val], order[test + val :]
    test_ds, val_ds, train_ds = (Dataset(x[i], y[i]) for i in parts)
    return DataBundle(
        name=name,
        train=train_ds,
        val=val_ds,
        test=test_ds,
        num_classes=int(y.shape[1]),
        normalization={"mean": 0.0, "std": 1.0},
        spec=dict(spec or {"name": name}),
    )


def sample_order(
    n: int, need: int, seed: int | None, name: str, sizes: tuple[int, int, int]
) -> np.ndarray:
    """The first ``need`` of a seeded permutation of ``n`` (or ``0..need-1`` for no seed)."""
    calib, val, test = sizes
    if min(sizes) < 1 or need > n:
        raise DataError(
            f"{name} has {n} sentences but the splits need {need} (calibration {calib}, "
            f"validation {val}, evaluation {test}); give more sentences or smaller --calib/--eval"
        )
    if seed is None:
        return np.arange(need)
    return np.random.default_rng(seed).permutation(n)[:need]


def load_text_data(
    path: str,
    *,
    teacher: str,
    max_length: int = 128,
    calib: int = 512,
    val: int = 128,
    eval: int = 2000,
    seed: int = 0,
    column: str | None = None,
    tokenizer: str | None = None,
    progress: bool = True,
) -> DataBundle:
    """The :class:`DataBundle` of a text file for the embedding model in folder ``teacher``.

    ``path``: a ``.txt`` (a sentence a line), ``.jsonl`` or ``.csv`` file (``column``: the
    text column). ``tokenizer``: the folder with the tokenizer files (default ``teacher``).
    """
    from ..models.hf import load_pretrained
    from .sources import cache_dir
    from .text import read_texts, tokenize

    source = Path(path).expanduser()
    table = read_texts(source, column=column)
    chosen = sample_order(len(table), calib + val + eval, seed, source.name, (calib, val, eval))
    texts = [table.texts[i] for i in chosen]  # only what the splits use is tokenised/embedded
    x = tokenize(texts, tokenizer or teacher, max_length=max_length)
    key = _digest(x, teacher)
    cached = cache_dir() / "embeddings" / f"{key}.npy"
    if cached.exists():
        y = torch.from_numpy(np.load(cached))
    else:
        model = load_pretrained(teacher, max_length=max_length)
        check_vocabulary(x, model, tokenizer or teacher)
        torch.manual_seed(seed)
        y = teacher_embeddings(model, x, progress=progress)
        _save_atomic(cached, y.numpy())
    spec = {
        "name": f"{TEXT_PREFIX}{source.resolve()}",
        "teacher": str(Path(teacher).resolve()),
        "max_length": max_length,
        "calib": calib,
        "val": val,
        "eval": eval,
        "seed": seed,
        **({"column": column} if column else {}),
        **({"tokenizer": str(tokenizer)} if tokenizer else {}),
    }
    name = source.name
    return embedding_bundle(x, y, calib=calib, val=val, test=eval, seed=None, name=name, spec=spec)


def check_vocabulary(x: torch.Tensor, model: nn.Module, tokenizer: str) -> None:
    """Refuse token ids the model's embedding table does not have (a tokenizer of another
    model)."""
    vocab = getattr(getattr(getattr(model, "backbone", None), "config", None), "vocab_size", None)
    top = int(x[:, 0].max()) if x.numel() else 0
    if vocab is not None and top >= int(vocab):
        raise DataError(
            f"the tokenizer in {tokenizer} produces token id {top} but the model has only "
            f"{vocab} tokens: the tokenizer does not match the model; pass the model's own "
            "tokenizer (--tokenizer) or the model folder it came with"
        )


def _digest(x: torch.Tensor, teacher: str) -> str:
    h = hashlib.sha256(x.numpy().tobytes())
    h.update(str(tuple(x.shape)).encode())
    for f in sorted(Path(teacher).glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        h.update(str(int(f.stat().st_mtime)).encode())
    return h.hexdigest()[:32]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)
