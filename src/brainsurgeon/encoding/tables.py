"""Compact storage of a per-symbol table of non-negative integers (code lengths, counts).

Layout: 1 byte mode (0 dense, 1 sparse), 1 byte value width ``vw``, then

* dense: all ``alphabet`` values bit-packed at ``vw`` bits;
* sparse: a 4-byte big-endian count ``k``, the ``k`` nonzero symbols at
  ``ceil(log2 alphabet)`` bits, then their values at ``vw`` bits.

Whichever is smaller is written, so a 2**16 alphabet with few symbols stays small.
"""

from __future__ import annotations

import numpy as np

from ..errors import EncodingError
from .bitpack import bit_width, pack, packed_size, unpack


def pack_table(values: np.ndarray) -> bytes:
    """Serialise ``values`` ``(alphabet,)`` (non-negative ints ``< 2**32``)."""
    values = np.asarray(values, dtype=np.uint64).ravel()
    vw = bit_width(int(values.max()) if values.size else 0)
    nz = np.flatnonzero(values)
    sw = bit_width(max(values.size - 1, 0))
    dense = packed_size(values.size, vw)
    sparse = 4 + packed_size(nz.size, sw) + packed_size(nz.size, vw)
    if dense <= sparse:
        return bytes([0, vw]) + pack(values.astype(np.uint32), vw)
    head = bytes([1, vw]) + int(nz.size).to_bytes(4, "big")
    return head + pack(nz.astype(np.uint32), sw) + pack(values[nz].astype(np.uint32), vw)


def unpack_table(data: bytes, alphabet: int) -> tuple[np.ndarray, int]:
    """Inverse of :func:`pack_table`: ``(values (alphabet,) int64, bytes consumed)``."""
    if len(data) < 2 or data[0] not in (0, 1) or not 1 <= data[1] <= 32:
        raise EncodingError("symbol table header is missing or corrupt")
    mode, vw = data[0], data[1]
    if mode == 0:
        end = 2 + packed_size(alphabet, vw)
        return unpack(data[2:], vw, alphabet).astype(np.int64), _checked(end, data)
    if len(data) < 6:
        raise EncodingError("sparse symbol table is truncated before its entry count")
    k = int.from_bytes(data[2:6], "big")
    if k > alphabet:
        raise EncodingError(f"sparse symbol table lists {k} symbols for an alphabet of {alphabet}")
    sw = bit_width(max(alphabet - 1, 0))
    mid = 6 + packed_size(k, sw)
    symbols = unpack(data[6:], sw, k).astype(np.int64)
    counts = unpack(data[mid:], vw, k).astype(np.int64)
    if k and (symbols.max() >= alphabet or np.any(np.diff(symbols) <= 0)):
        raise EncodingError("sparse symbol table has symbols out of range or out of order")
    values = np.zeros(alphabet, dtype=np.int64)
    values[symbols] = counts
    return values, _checked(mid + packed_size(k, vw), data)


def _checked(end: int, data: bytes) -> int:
    if end > len(data):
        raise EncodingError(f"symbol table is truncated: needs {end} bytes, got {len(data)}")
    return end
