"""Fixed-width bit packing: ``n`` codes of ``width`` bits, MSB first, big-endian, no gaps.

Code ``i`` occupies stream bits ``[i*width, (i+1)*width)``; bit 0 of the stream is the most
significant bit of byte 0. The last byte is zero-padded, so ``ceil(n*width/8)`` bytes.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, EncodingError

_CHUNK = 1 << 20  # codes per vectorised chunk (a multiple of 8: chunks stay byte aligned)


def packed_size(count: int, width: int) -> int:
    """Bytes that ``count`` codes of ``width`` bits occupy: ``ceil(count*width/8)``."""
    return (int(count) * int(width) + 7) // 8


def _check_width(width: int) -> int:
    if isinstance(width, bool) or int(width) != width or not 1 <= int(width) <= 32:
        raise ConfigError(f"bit width must be an integer in 1..32, got {width!r}")
    return int(width)


def pack(codes: np.ndarray, width: int) -> bytes:
    """Pack unsigned integer ``codes`` (any shape, flattened) into ``width``-bit fields."""
    width = _check_width(width)
    codes = np.asarray(codes).ravel()
    if codes.size == 0:
        return b""
    if codes.dtype.kind not in "ui" or (codes.dtype.kind == "i" and codes.min() < 0):
        raise ConfigError(f"codes must be non-negative integers, got dtype {codes.dtype}")
    top = int(codes.max())
    if top >= 1 << width:
        raise ConfigError(
            f"code {top} does not fit in {width} bits (max {(1 << width) - 1}); widen the field"
        )
    big = codes.astype(">u4")
    parts = []
    for start in range(0, big.size, _CHUNK):
        bits = np.unpackbits(big[start : start + _CHUNK].view(np.uint8).reshape(-1, 4), axis=1)
        parts.append(np.packbits(bits[:, 32 - width :]).tobytes())
    return b"".join(parts)


def unpack(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``count`` codes as ``uint32`` ``(count,)``.

    Bytes beyond ``packed_size(count, width)`` are ignored; too few raise ``EncodingError``.
    """
    width = _check_width(width)
    count = int(count)
    if count < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    need = packed_size(count, width)
    if len(data) < need:
        raise EncodingError(
            f"bit-packed data is truncated: {count} codes of {width} bits need {need} bytes, "
            f"got {len(data)}"
        )
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    out = np.empty(count, dtype=np.uint32)
    step = _CHUNK * width // 8
    for k, start in enumerate(range(0, need, step)):
        n = min(_CHUNK, count - k * _CHUNK)
        bits = np.unpackbits(raw[start : start + step], count=n * width).reshape(n, width)
        full = np.zeros((n, 32), dtype=np.uint8)
        full[:, 32 - width :] = bits
        out[k * _CHUNK : k * _CHUNK + n] = np.packbits(full, axis=1).view(">u4").ravel()
    return out


def bit_width(value: int) -> int:
    """Bits needed to store every integer in ``0..value`` (at least 1)."""
    return max(1, int(value).bit_length())
