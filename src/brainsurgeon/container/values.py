"""Value models: how the nonzero values of one weight tensor are written.

A model turns the ``m`` nonzero values ``v (m,)`` (float32, at flat positions ``pos (m,)`` of
a weight of shape ``S``, row ``r = pos // (n / S[0])`` of its matrix view) into integer symbol
streams plus small float tables, and back. The writer fits every model that applies, keeps
those whose decode reproduces ``v`` bit for bit, and writes the smallest, so a loaded file
equals the in-memory model exactly:

* ``codebook``: the distinct values ``u (k,)`` and one index per weight, ``v = u[i]``
  (k-means shared weights, binary/ternary/uniform per tensor, any tensor with few levels);
* ``rows``: distinct values per row and local indices (per-channel binary or ternary);
* ``affine``: integer codes ``q`` with the quantizer's per-channel scale ``s`` and zero point
  ``z``, ``v = (q - z_r) s_r`` (uniform and GPTQ, per channel);
* ``vector``: a vector quantizer's indices and codebooks (product, residual), decoded by the
  quantizer's own ``decode``; the weight is that decode at the stored positions;
* ``float32``: the values themselves, 32 bits each (what cannot be coded compactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..registry import Registry

MAX_ALPHABET = 2**16


@dataclass
class Fitted:
    """One model's encoding: symbol ``streams`` (name -> (symbols, alphabet)), float ``tables``
    and JSON ``meta``; ``streams["codes"]`` holds one symbol per nonzero value when present."""

    model: str
    streams: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)
    tables: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    zero_entries: bool = True  # False: cannot hold a stored 0 (use only where none is stored)


@dataclass(frozen=True)
class ValueModel:
    """``fit(v, pos, shape, hint) -> Fitted | None`` and ``decode(fitted, pos, shape) -> v``."""

    fit: Callable[..., Fitted | None]
    decode: Callable[[Fitted, np.ndarray, tuple[int, ...]], np.ndarray]


def rows_of(pos: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Row of each flat position in the ``(S[0], n / S[0])`` matrix view, and the row count."""
    if len(shape) < 2:
        return np.zeros_like(pos), 1
    return pos // max(math.prod(shape[1:]), 1), int(shape[0])


VALUE_MODELS: Registry[ValueModel] = Registry("value model")


def _fit_codebook(v: np.ndarray, pos: np.ndarray, shape, hint: dict | None) -> Fitted | None:
    table, codes = np.unique(v, return_inverse=True)
    if table.size > MAX_ALPHABET:
        return None
    return Fitted("codebook", {"codes": (codes.reshape(-1), max(table.size, 1))}, {"table": table})


def _decode_codebook(f: Fitted, pos: np.ndarray, shape) -> np.ndarray:
    codes, table = f.streams["codes"][0], f.tables["table"]
    _check_codes(codes, table.size)
    return table[codes]


def _fit_rows(v: np.ndarray, pos: np.ndarray, shape, hint: dict | None) -> Fitted | None:
    r, n_rows = rows_of(pos, shape)
    order = np.lexsort((v, r))
    rs, vs = r[order], v[order]
    new = np.ones(vs.size, dtype=bool)
    new[1:] = (rs[1:] != rs[:-1]) | (vs[1:] != vs[:-1])
    level = np.cumsum(new) - 1  # global index of each entry's distinct (row, value) pair
    counts = np.bincount(rs[new], minlength=n_rows)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if counts.size and counts.max() > MAX_ALPHABET:
        return None
    codes = np.empty(v.size, dtype=np.int64)
    codes[order] = level - starts[rs]
    alphabet = max(int(counts.max(initial=0)), 1)
    streams = {"codes": (codes, alphabet), "counts": (counts, alphabet + 1)}
    return Fitted("rows", streams, {"table": vs[new]})


def _decode_rows(f: Fitted, pos: np.ndarray, shape) -> np.ndarray:
    r, _ = rows_of(pos, shape)
    codes, counts, table = f.streams["codes"][0], f.streams["counts"][0], f.tables["table"]
    if counts.sum() != table.size or (r.size and r.max() >= counts.size):
        raise ValueError("the per-row counts do not match the table")
    starts = np.cumsum(counts) - counts
    _check_codes(codes, counts[r] if r.size else 0)
    return table[starts[r] + codes]


def _fit_affine(v: np.ndarray, pos: np.ndarray, shape, hint: dict | None) -> Fitted | None:
    if not hint or "scale" not in hint:
        return None
    r, n_rows = rows_of(pos, shape)
    group_size = int(hint.get("group_size") or 0)
    scale = np.asarray(hint["scale"], dtype=np.float32).reshape(-1)
    zero = np.asarray(hint["zero_point"], dtype=np.float32).reshape(-1)
    if group_size:
        rr = _group_index(pos, shape, group_size)
        if rr.size and rr.max() >= scale.size:
            return None
    elif scale.size not in (1, n_rows):
        return None
    else:
        rr = r if scale.size > 1 else np.zeros_like(r)
    qmin, levels = int(hint["qmin"]), 2 ** int(hint["bits"])
    q = np.round(v / scale[rr]) + zero[rr]
    codes = q.astype(np.int64) - qmin
    if codes.size and (codes.min() < 0 or codes.max() >= levels):
        return None
    meta = {"qmin": qmin, "per_channel": bool(scale.size > 1)}
    if group_size:
        meta["group_size"] = group_size
    return Fitted("affine", {"codes": (codes, levels)}, {"scale": scale, "zero": zero}, meta)


def _group_index(pos: np.ndarray, shape, group_size: int) -> np.ndarray:
    """Index into a row-major ``(rows, groups)`` grid of each flat position's column group."""
    cols = max(math.prod(shape[1:]), 1) if len(shape) > 1 else max(math.prod(shape), 1)
    groups = -(-cols // group_size)
    return (pos // cols) * groups + (pos % cols) // group_size


def _decode_affine(f: Fitted, pos: np.ndarray, shape) -> np.ndarray:
    r, _ = rows_of(pos, shape)
    codes, scale, zero = f.streams["codes"][0], f.tables["scale"], f.tables["zero"]
    if f.meta.get("group_size"):
        rr = _group_index(pos, shape, int(f.meta["group_size"]))
    else:
        rr = r if f.meta["per_channel"] else np.zeros_like(r)
    if rr.size and rr.max() >= scale.size:
        raise ValueError("a row has no scale")
    q = (codes + f.meta["qmin"]).astype(np.float32)
    return (q - zero[rr]) * scale[rr]


def _fit_float(v: np.ndarray, pos: np.ndarray, shape, hint: dict | None) -> Fitted:
    return Fitted("float32", tables={"values": v.astype(np.float32)})


def _decode_float(f: Fitted, pos: np.ndarray, shape) -> np.ndarray:
    return f.tables["values"]


def _fit_vector(v: np.ndarray, pos: np.ndarray, shape, hint: dict | None) -> Fitted | None:
    if not hint or "vector" not in hint:
        return None
    h = hint["vector"]
    books, indices = np.asarray(h["codebooks"], np.float32), np.asarray(h["indices"], np.int64)
    meta = {"kind": h["kind"], "config": h["config"], "books": list(books.shape)}
    meta["indices"] = list(indices.shape)
    streams = {"indices": (indices.reshape(-1), int(books.shape[1]))}
    return Fitted("vector", streams, {"codebooks": books.reshape(-1)}, meta, zero_entries=False)


def _decode_vector(f: Fitted, pos: np.ndarray, shape) -> np.ndarray:
    import torch

    from ..state import PARAMETRIZATIONS, import_plugins

    import_plugins()
    cls = PARAMETRIZATIONS.get(f.meta["kind"])
    p = cls.from_config(f.meta["config"], torch.zeros(shape))
    with torch.no_grad():
        p.codebooks.copy_(torch.tensor(f.tables["codebooks"].reshape(f.meta["books"])))
        indices = f.streams["indices"][0].reshape(f.meta["indices"])
        p.indices.copy_(torch.from_numpy(indices.astype(np.int16)))
        full = p.decode().reshape(-1).numpy()
    return full[pos]


def _check_codes(codes: np.ndarray, bound) -> None:
    if codes.size and (codes.min() < 0 or np.any(codes >= bound)):
        raise ValueError("a code points past its table")


VALUE_MODELS.register("codebook", "distinct values + one index per weight")(
    ValueModel(_fit_codebook, _decode_codebook)
)
VALUE_MODELS.register("rows", "distinct values per row + local indices")(
    ValueModel(_fit_rows, _decode_rows)
)
VALUE_MODELS.register("affine", "integer codes with per-channel scale and zero point")(
    ValueModel(_fit_affine, _decode_affine)
)
VALUE_MODELS.register("vector", "a vector quantizer's indices and codebooks (product, residual)")(
    ValueModel(_fit_vector, _decode_vector)
)
VALUE_MODELS.register("float32", "the values themselves, 32 bits each")(
    ValueModel(_fit_float, _decode_float)
)


def fit_all(v: np.ndarray, pos: np.ndarray, shape, hint: dict | None) -> list[Fitted]:
    """Every model whose encoding decodes back to ``v`` exactly (float32 always does)."""
    out = []
    for name in VALUE_MODELS.names():
        model = VALUE_MODELS.get(name)
        fitted = model.fit(v, pos, tuple(shape), hint)
        if fitted is None:
            continue
        back = np.asarray(model.decode(fitted, pos, tuple(shape)), dtype=np.float32)
        if back.shape == v.shape and np.array_equal(back.view(np.uint32), v.view(np.uint32)):
            out.append(fitted)
    return out
