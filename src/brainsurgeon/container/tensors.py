"""One tensor in a compressed file: where its nonzeros are, and what they are.

A weight ``W`` (shape ``S``, ``n`` entries, matrix view ``(rows, n / rows)``) is written as

* **positions** of the stored *entries*: ``dense`` (every entry), ``bitmask`` (``n`` bits)
  or ``csr`` (Deep Compression: the gap from the previous entry in a ``w``-bit field, a filler
  entry holding 0 when a gap overflows it; ``w`` = 5 for fully connected layers and 8 for
  convolutions by default);
* **values** of the entries by a value model (:mod:`.values`); an entry that holds 0 (a
  filler, or a zero under ``dense``) takes one extra symbol of the code alphabet.

Every combination is sized from its streams' order-0 entropy and the smallest is encoded, each
stream with the codec :func:`brainsurgeon.encoding.encode_stream` finds smallest. Tensors
that are not weights of a compressible layer (biases, norms, buffers) are stored raw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..encoding import (
    DEFAULT_CODECS,
    EncodedStream,
    decode_stream,
    encode_stream,
    entropy_bits,
    gap_decode,
    gap_encode,
    mask_pack,
    mask_unpack,
)
from .values import VALUE_MODELS, Fitted, fit_all

DEFAULT_INDEX_BITS = {"linear": 5, "conv": 8}
AUTO_WIDTHS = range(2, 11)


@dataclass
class Encoded:
    """A tensor's JSON ``record`` and its binary ``sections`` (named ``tensor/part``)."""

    record: dict[str, Any]
    sections: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Entries:
    """Stored entries under one position format: flat ``pos (e,)``, ``zero (e,)`` (entry holds
    0), the position streams and their estimated bytes."""

    fmt: str
    pos: np.ndarray
    zero: np.ndarray
    streams: dict[str, tuple[np.ndarray, int]]
    est: float
    width: int | None = None


def stream_estimate(symbols: np.ndarray, alphabet: int) -> float:
    """Bytes one stream will take: the cheaper of fixed-width codes and its order-0 entropy
    plus a small code table."""
    if symbols.size == 0:
        return 0.0
    raw = symbols.size * math.ceil(math.log2(max(alphabet, 2))) / 8
    used = int(np.count_nonzero(np.bincount(symbols, minlength=1)))
    return min(raw, entropy_bits(symbols, alphabet) / 8 + 2 * used + 8)


def position_formats(nonzero: np.ndarray, widths: list[int]) -> list[Entries]:
    """Candidate position formats for the flat ``nonzero (n,)`` mask."""
    n = nonzero.size
    nz = np.flatnonzero(nonzero)
    out = [Entries("dense", np.arange(n), ~nonzero, {}, 0.0)]
    out.append(Entries("bitmask", nz, np.zeros(nz.size, bool), {}, math.ceil(n / 8)))
    for w in widths:
        gaps, filler = gap_encode(nonzero, w)
        pos = gap_decode(gaps, n)
        est = stream_estimate(gaps.astype(np.int64), 2**w)
        out.append(Entries("csr", pos, filler, {"gaps": (gaps, 2**w)}, est, w))
    return out


def value_estimate(fitted: Fitted, entries: Entries) -> float:
    """Bytes of ``fitted``'s streams and tables at ``entries`` (zeros take one extra symbol)."""
    total = sum(t.nbytes for t in fitted.tables.values())
    if fitted.model == "float32":  # one value per entry
        return total + 4 * int(entries.zero.sum())
    for name, (symbols, alphabet) in fitted.streams.items():
        if name == "codes":
            symbols, alphabet = entry_codes(symbols, alphabet, entries.zero)
        total += stream_estimate(symbols.astype(np.int64), alphabet)
    return total


def entry_codes(codes: np.ndarray, alphabet: int, zero: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes at every entry: the nonzeros' codes in order, ``alphabet`` at zero entries."""
    if not zero.any():
        return codes, alphabet
    out = np.full(zero.size, alphabet, dtype=np.int64)
    out[~zero] = codes
    return out, alphabet + 1


def widths_for(kind: str, index_bits: int | str | None) -> list[int]:
    """CSR field widths to try: the given one, all of 2..10 for ``"auto"``, else Han's default."""
    if index_bits == "auto":
        return list(AUTO_WIDTHS)
    if index_bits is not None:
        return [int(index_bits)]
    return [DEFAULT_INDEX_BITS["conv" if kind.startswith("Conv") else "linear"]]


def encode_weight(
    name: str,
    weight: torch.Tensor,
    *,
    kind: str,
    hint: dict | None,
    index_bits: int | str | None,
    codecs: tuple[str, ...] | None,
) -> Encoded:
    """Encode one float32 weight by the smallest (positions, value model) pair."""
    flat = weight.detach().cpu().contiguous().reshape(-1).numpy()
    n_rows = weight.shape[0] if weight.dim() > 1 else 1
    nonzero = flat != 0
    nz = np.flatnonzero(nonzero)
    fits = fit_all(flat[nz], nz, tuple(weight.shape), hint)
    formats = position_formats(nonzero, widths_for(kind, index_bits))
    pairs = [
        (e.est + value_estimate(f, e), i, j)
        for i, e in enumerate(formats)
        for j, f in enumerate(fits)
        if f.zero_entries or not e.zero.any()
    ]
    _, i, j = min(pairs)
    entries, fitted = formats[i], fits[j]
    record = {
        "name": name,
        "shape": list(weight.shape),
        "dtype": "float32",
        "encoding": "weight",
        "rows": n_rows,
        "positions": {
            "format": entries.fmt,
            "width": entries.width,
            "entries": int(entries.pos.size),
        },
        "values": {
            "model": fitted.model,
            "meta": fitted.meta,
            "zero_symbol": bool(entries.zero.any()),
        },
        "streams": {},
        "tables": {},
    }
    out = Encoded(record)
    if entries.fmt == "bitmask":
        _raw(out, "mask", mask_pack(nonzero))
    for sname, (symbols, alphabet) in entries.streams.items():
        _stream(out, sname, symbols, alphabet, codecs)
    for sname, (symbols, alphabet) in fitted.streams.items():
        if sname == "codes":
            symbols, alphabet = entry_codes(symbols, alphabet, entries.zero)
        _stream(out, sname, symbols, alphabet, codecs)
    tables = dict(fitted.tables)
    if fitted.model == "float32":  # zeros at entries are stored as values too
        tables["values"] = flat[entries.pos]
    for tname, array in tables.items():
        _raw(out, tname, np.ascontiguousarray(array, dtype=np.float32).tobytes())
        record["tables"][tname] = {"section": f"{name}/{tname}", "count": int(array.size)}
    record["nonzeros"] = int(nz.size)
    return out


def _raw(out: Encoded, part: str, data: bytes) -> None:
    out.sections[f"{out.record['name']}/{part}"] = data


def _stream(out, sname, symbols, alphabet, codecs) -> None:
    allowed = DEFAULT_CODECS if codecs is None else tuple(codecs)
    s = encode_stream(np.asarray(symbols, dtype=np.int64), int(alphabet), codecs=allowed)
    section = f"{out.record['name']}/{sname}"
    out.record["streams"][sname] = {
        "section": section,
        "codec": s.codec,
        "count": s.count,
        "alphabet": s.alphabet,
        "meta": s.meta,
    }
    out.sections[section] = s.payload


def encode_raw(name: str, tensor: torch.Tensor) -> Encoded:
    """A tensor stored as its bytes (biases, norm statistics, integer buffers)."""
    t = tensor.detach().cpu().contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    record = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    record.update(encoding="raw", section=f"{name}/raw")
    return Encoded(record, {f"{name}/raw": data})


def decode_tensor(record: dict[str, Any], sections: dict[str, bytes]) -> torch.Tensor:
    """Rebuild one tensor from its ``record`` and the file's ``sections`` (KeyError/ValueError
    on inconsistent input; the reader names the tensor)."""
    shape = [int(d) for d in record["shape"]]
    if record["encoding"] == "raw":
        dtype = getattr(torch, record["dtype"])
        data = bytearray(sections[record["section"]])
        flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return flat.reshape(shape).clone()
    n = math.prod(shape)
    pos, zero = _decode_positions(record, sections, n)
    fitted = Fitted(record["values"]["model"], meta=record["values"]["meta"])
    for tname, info in record["tables"].items():
        fitted.tables[tname] = np.frombuffer(sections[info["section"]], dtype=np.float32)
    for sname, info in record["streams"].items():
        if sname != "gaps":
            fitted.streams[sname] = (_read_stream(info, sections), int(info["alphabet"]))
    flat = np.zeros(n, dtype=np.float32)
    if fitted.model == "float32":
        flat[pos] = fitted.tables["values"]
        return torch.from_numpy(flat).reshape(shape)
    if zero is None:  # zeros at entries are the extra symbol of the codes, if there is one
        codes, alphabet = fitted.streams.get("codes", (None, 0))
        zero = codes == alphabet - 1 if record["values"]["zero_symbol"] else pos < 0
    if "codes" in fitted.streams:
        codes, alphabet = fitted.streams["codes"]
        fitted.streams["codes"] = (codes[~zero], alphabet)
    keep = pos[~zero]
    flat[keep] = VALUE_MODELS.get(fitted.model).decode(fitted, keep, tuple(shape))
    return torch.from_numpy(flat).reshape(shape)


def _decode_positions(record, sections, n) -> tuple[np.ndarray, np.ndarray | None]:
    """Entry positions and, where the format says, which entries hold 0 (None: from codes)."""
    fmt = record["positions"]["format"]
    if fmt == "dense":
        pos = np.arange(n)
    elif fmt == "bitmask":
        pos = np.flatnonzero(mask_unpack(sections[f"{record['name']}/mask"], n))
        return pos, np.zeros(pos.size, dtype=bool)
    elif fmt == "csr":
        pos = gap_decode(_read_stream(record["streams"]["gaps"], sections), n)
    else:
        raise ValueError(f"unknown position format {fmt!r}")
    if pos.size != record["positions"]["entries"]:
        raise ValueError("the positions do not match the entry count")
    return pos, None


def _read_stream(info: dict[str, Any], sections: dict[str, bytes]) -> np.ndarray:
    s = EncodedStream(
        info["codec"],
        int(info["count"]),
        int(info["alphabet"]),
        sections[info["section"]],
        info["meta"],
    )
    return decode_stream(s).astype(np.int64)
