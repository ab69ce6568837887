"""Text data: sentences (optionally labelled, or STS-style scored pairs) from .txt, .jsonl, .csv.

``read_texts`` reads a file into a :class:`TextTable`; ``split_texts`` draws disjoint
calibration/evaluation rows by seed; ``tokenize`` turns sentences into a cached
``(N, 2, L)`` LongTensor of ``input_ids`` and ``attention_mask`` with a local tokenizer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path
from ..errors import DataError
from .sources import cache_dir

SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv")
# Files that decide how a tokenizer splits text (hashed for the cache key; weights are not).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model",
    "config.json",
)  # fmt: skip


@dataclass(frozen=True)
class TextTable:
    """Rows of text read from one file.

    Single-sentence tables: ``texts[i]`` is row ``i``. Pair tables (``pairs`` set): row ``i`` is
    ``pairs[i] == (texts[2i], texts[2i + 1])``, so ``texts`` holds every sentence once per pair,
    ready to tokenise in one call. ``labels`` (ints) and ``scores`` (floats) are per row.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...] | None = None
    pairs: tuple[tuple[str, str], ...] | None = None
    scores: tuple[float, ...] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs is not None else len(self.texts)

    def take(self, rows: Sequence[int]) -> TextTable:
        """The table restricted to ``rows`` (in that order)."""
        rows = [int(r) for r in rows]

        def pick(values):
            return None if values is None else tuple(values[r] for r in rows)

        pairs = pick(self.pairs)
        texts = tuple(s for p in pairs for s in p) if pairs is not None else pick(self.texts)
        return TextTable(texts, pick(self.labels), pairs, pick(self.scores), self.source)


# ----------------------------------------------------------------------------- reading


def read_texts(
    path: str | os.PathLike,
    *,
    column: str | None = None,
    label_column: str | None = None,
    pair_columns: tuple[str, str] | None = None,
    score_column: str | None = None,
) -> TextTable:
    """Read ``.txt`` (a sentence a line), ``.jsonl`` (an object a line) or ``.csv``/``.tsv``.

    ``column`` (default ``"text"``) names the sentence field; ``pair_columns=("sentence1",
    "sentence2")`` with ``score_column="score"`` reads STS-style scored pairs instead;
    ``label_column`` reads an integer class label per row. Raises DataError for a missing,
    empty, non-UTF-8 or malformed file, naming the line and what it has.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"text file not found: {path}; pass the path of a {'/'.join(SUFFIXES)}")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(
            f"{path}: cannot read {path.suffix or 'a file without a suffix'!r} as text; "
            f"expected one of {', '.join(SUFFIXES)}"
        )
    if pair_columns is not None and column is not None:
        raise DataError(f"{path}: pass either column= or pair_columns=, not both")
    text = _decode(path)
    fields = tuple(pair_columns) if pair_columns is not None else (column or "text",)
    if path.suffix.lower() == ".txt":
        if pair_columns or label_column or score_column or column not in (None, "text"):
            raise DataError(
                f"{path}: a .txt file has one sentence a line and no columns; use .jsonl or "
                ".csv for labels, scores or pairs"
            )
        rows = [({"text": s.strip()}, i) for i, s in enumerate(text.splitlines(), 1) if s.strip()]
    elif path.suffix.lower() == ".jsonl":
        rows = _jsonl_rows(path, text)
    else:
        rows = _csv_rows(path, text, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    if not rows:
        raise DataError(f"{path} has no sentences (the file is empty or only blank lines)")
    return _table(path, rows, fields, label_column, score_column, pairs=pair_columns is not None)


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path} is not UTF-8: byte {raw[err.start]:#04x} at offset {err.start} (line "
            f"{line}); re-save the file as UTF-8"
        ) from None


def _jsonl_rows(path: Path, text: str) -> list[tuple[dict, int]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{path} line {number} is a JSON {type(obj).__name__}; expected one object "
                'a line, e.g. {"text": "..."}'
            )
        rows.append((obj, number))
    return rows


def _csv_rows(path: Path, text: str, *, delimiter: str) -> list[tuple[dict, int]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            if None in row or None in row.values():
                raise DataError(
                    f"{path} line {reader.line_num} has a different number of fields than "
                    f"the header ({len(reader.fieldnames or [])}); quote fields that contain "
                    f"{delimiter!r}"
                )
            if any(v.strip() for v in row.values()):
                rows.append((row, reader.line_num))
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num} is not valid CSV ({err})") from None
    return rows


def _table(path, rows, fields, label_column, score_column, *, pairs: bool) -> TextTable:
    wanted = list(fields) + [c for c in (label_column, score_column) if c]
    for obj, number in rows:
        missing = [c for c in wanted if c not in obj]
        if missing:
            raise DataError(
                f"{path} line {number} has no column {missing[0]!r}; it has "
                f"{', '.join(map(repr, obj)) or 'none'}"
            )
    sentences = [tuple(_sentence(path, obj, c, n) for c in fields) for obj, n in rows]
    labels = None if not label_column else tuple(_label(path, o, label_column, n) for o, n in rows)
    scores = None if not score_column else tuple(_score(path, o, score_column, n) for o, n in rows)
    texts = tuple(s for row in sentences for s in row)
    return TextTable(texts, labels, tuple(sentences) if pairs else None, scores, str(path))


def _sentence(path: Path, obj: dict, column: str, number: int) -> str:
    value = obj[column]
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"{path} line {number}: column {column!r} is {value!r}; expected a non-empty string"
        )
    return value.strip()


def _number(path: Path, obj: dict, column: str, number: int, what: str) -> float:
    value = obj[column]
    try:
        out = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        out = math.nan
    if isinstance(value, bool) or not math.isfinite(out):
        raise DataError(f"{path} line {number}: {what} {column!r} is {value!r}; expected a number")
    return out


def _label(path: Path, obj: dict, column: str, number: int) -> int:
    value = _number(path, obj, column, number, "label")
    if value != int(value):
        raise DataError(
            f"{path} line {number}: label {column!r} is {obj[column]!r}; expected an integer "
            "class label (use score_column= for real-valued targets)"
        )
    return int(value)


def _score(path: Path, obj: dict, column: str, number: int) -> float:
    return _number(path, obj, column, number, "score")


# ----------------------------------------------------------------------------- splitting


def split_texts(
    table: TextTable, *, seed: int, calib: int, eval: int | None
) -> tuple[TextTable, TextTable]:
    """Disjoint calibration and evaluation rows drawn by ``numpy.random.default_rng(seed)``.

    Returns ``(calibration, evaluation)`` with ``calib`` and ``eval`` rows (``eval=None``: every
    row not used for calibration). Raises DataError when the table has too few rows.
    """
    if calib < 0 or (eval is not None and eval < 0):
        raise DataError(f"split sizes must be >= 0; got calib={calib}, eval={eval}")
    n = len(table)
    need = calib + (eval if eval is not None else 1)
    if need > n:
        raise DataError(
            f"{table.source or 'the text table'} has {n} rows but the split needs {need} "
            f"({calib} calibration + {eval if eval is not None else 'at least 1'} evaluation); "
            "use a larger file or smaller --calib/--eval sizes"
        )
    order = np.random.default_rng(seed).permutation(n)
    stop = n if eval is None else calib + eval
    return table.take(order[:calib]), table.take(order[calib:stop])


# ----------------------------------------------------------------------------- tokenising


def tokenize(
    texts: Sequence[str], tokenizer_dir: str | os.PathLike, *, max_length: int = 128
) -> torch.Tensor:
    """Tokenise ``texts`` with the tokenizer saved in ``tokenizer_dir`` (no network).

    Returns a LongTensor ``(N, 2, L)``, ``L = max_length``: ``[:, 0]`` input ids, ``[:, 1]``
    the attention mask (1 for tokens, 0 for padding); longer texts are truncated. Cached under
    ``cache_dir()/tokens/<sha256(tokenizer files, max_length, texts)>.npz``.
    """
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise DataError("tokenize needs a non-empty sequence of strings")
    if max_length < 2:
        raise DataError(f"max_length must be >= 2 (room for [CLS] and [SEP]); got {max_length}")
    folder = Path(tokenizer_dir).expanduser()
    path = cache_dir() / "tokens" / f"{_cache_key(texts, folder, max_length)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return torch.from_numpy(z["tokens"].astype(np.int64))
    tok = _load_tokenizer(folder)
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length,
              return_tensors="np")  # fmt: skip
    tokens = np.stack([enc["input_ids"], enc["attention_mask"]], axis=1).astype(np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, tokens=tokens)
    return torch.from_numpy(tokens)


def _cache_key(texts: list[str], folder: Path, max_length: int) -> str:
    files = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if not folder.is_dir() or not files:
        raise DataError(
            f"no tokenizer in {folder}: expected a folder with tokenizer.json or vocab.txt "
            "(e.g. `brainsurgeon data fetch minilm`, or a save_pretrained folder)"
        )
    h = hashlib.sha256()
    for f in files:
        data = f.read_bytes()
        h.update(f"{f.name}\0{len(data)}\0".encode())
        h.update(data)
    h.update(f"max_length={max_length}\0n={len(texts)}\0".encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def _load_tokenizer(folder: Path):
    """``AutoTokenizer.from_pretrained(folder, local_files_only=True)``, offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError("tokenising text needs `transformers`; pip install transformers") from None
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, ...
        first = str(err).strip().splitlines()[:1] or [type(err).__name__]
        raise DataError(f"cannot load a tokenizer from {folder} ({first[0][:200]})") from None
