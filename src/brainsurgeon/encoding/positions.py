"""Where the kept entries of a flat ``(n,)`` keep mask are: relative indices, bitmask, dense.

Relative (gap) indices follow Deep Compression (Han, Mao & Dally, ICLR 2016, Sec. 3): each
stored entry records its distance from the previous stored entry in a ``w``-bit field
(5 bits for fully connected layers, 8 for convolutions); a distance that does not fit is
bridged with *filler* entries, stored positions whose value the caller codes as zero.

Convention (exact): positions ``p_0 < p_1 < ...`` of all stored entries (fillers included),
with ``p_{-1} = -1``; gap ``g_i = p_i - p_{i-1}`` lies in ``1..2**w``, and the field holds
``g_i - 1`` in ``0..2**w - 1``. A gap ``d > 2**w`` becomes ``f = (d - 1) // 2**w`` fillers
of gap ``2**w`` followed by the real entry with gap ``d - f * 2**w``. Positions after the
last kept entry are implied by ``n``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, EncodingError

DEFAULT_INDEX_BITS: dict[str, int] = {"linear": 5, "conv": 8}
FORMATS = ("dense", "bitmask", "gaps")


def default_index_bits(kind: str) -> int:
    """Han et al.'s relative-index width for a layer ``kind`` ("linear" 5 bits, "conv" 8)."""
    try:
        return DEFAULT_INDEX_BITS[kind]
    except KeyError:
        raise ConfigError(
            f"no default index width for layer kind {kind!r}; valid: "
            f"{', '.join(sorted(DEFAULT_INDEX_BITS))}, or pass a width in 1..32"
        ) from None


def _flat_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ConfigError(f"keep mask must be boolean, got dtype {mask.dtype}")
    return mask.ravel()


def gap_encode(mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative indices of ``mask``'s True entries: ``(fields (m,) uint32, filler (m,) bool)``.

    ``fields[i] = g_i - 1`` (see the module docstring) fits in ``width`` bits; ``filler[i]``
    marks an inserted entry whose value must be stored as zero. ``m = k + sum(f)`` for ``k``
    kept entries. Vectorised: the filler count per gap is ``(d - 1) // 2**width``.
    """
    if isinstance(width, bool) or int(width) != width or not 1 <= int(width) <= 32:
        raise ConfigError(f"index width must be an integer in 1..32, got {width!r}")
    reach = np.int64(1) << int(width)
    pos = np.flatnonzero(_flat_mask(mask)).astype(np.int64)
    d = np.diff(pos, prepend=np.int64(-1))
    fillers = (d - 1) // reach
    per_entry = fillers + 1
    last = np.cumsum(per_entry) - 1
    gaps = np.full(int(per_entry.sum()), reach, dtype=np.int64)
    gaps[last] = d - fillers * reach
    filler = np.ones(gaps.size, dtype=bool)
    filler[last] = False
    return (gaps - 1).astype(np.uint32), filler


def gap_decode(gaps: np.ndarray, n: int) -> np.ndarray:
    """Flat positions ``(m,) int64`` of every stored entry: ``p_i = sum_{j<=i}(fields_j+1) - 1``.

    Raises ``EncodingError`` when a position falls outside ``0..n-1``.
    """
    gaps = np.asarray(gaps)
    if gaps.size and (gaps.dtype.kind not in "ui" or int(gaps.min()) < 0):
        raise EncodingError(f"gap fields must be non-negative integers, got dtype {gaps.dtype}")
    pos = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if pos.size and pos[-1] >= n:
        raise EncodingError(
            f"relative indices reach position {int(pos[-1])} but the tensor has {n} entries; "
            "the index stream is corrupt or belongs to another tensor"
        )
    return pos


def mask_pack(mask: np.ndarray) -> bytes:
    """One bit per entry, MSB first: ``ceil(n/8)`` bytes."""
    return np.packbits(_flat_mask(mask)).tobytes()


def mask_unpack(data: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`mask_pack`: ``(n,) bool``; needs exactly ``ceil(n/8)`` bytes."""
    need = (int(n) + 7) // 8
    if len(data) != need:
        raise EncodingError(f"bitmask of {n} entries needs {need} bytes, got {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits[n:].any():
        raise EncodingError("bitmask padding bits are set; the mask bytes are corrupt")
    return bits[:n].astype(bool)


def dense_positions(n: int) -> np.ndarray:
    """The dense format stores no positions: every entry ``0..n-1`` is present."""
    return np.arange(int(n), dtype=np.int64)


def position_bits(mask: np.ndarray, fmt: str, width: int = 5) -> int:
    """Bits the position format ``fmt`` spends on ``mask`` (values not included)."""
    mask = _flat_mask(mask)
    if fmt == "dense":
        return 0
    if fmt == "bitmask":
        return 8 * ((mask.size + 7) // 8)
    if fmt == "gaps":
        return int(gap_encode(mask, width)[0].size) * int(width)
    raise ConfigError(f"unknown position format {fmt!r}; valid: {', '.join(FORMATS)}")
