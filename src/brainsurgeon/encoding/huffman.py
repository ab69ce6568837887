"""Canonical, length-limited Huffman coding, vectorised over numpy.

Lengths: package-merge (Larmore & Hirschberg 1990), optimal among prefix codes whose
longest codeword is ``<= max_length``: it minimises ``sum_s counts[s] * lengths[s]``
subject to Kraft ``sum_s 2**-lengths[s] <= 1``. Only the lengths are stored; codewords are
canonical (sorted by ``(length, symbol)``, consecutive integers, MSB first). A stream with
one distinct symbol gets a 1-bit code (1 bit per symbol; the ``ans`` codec spends ~0).

Bitstream layout (:func:`encode`): ``[log2 B][w][bit length of each block at w bits]`` then
the codewords, MSB first. Blocks of ``B`` symbols start at recorded bit offsets, so
:func:`decode` decodes every block in lockstep with a ``2**L`` lookup table: a Python loop
over the ``B`` positions of a block, vectorised across the ``ceil(count / B)`` blocks.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, EncodingError
from .bitpack import bit_width, pack, packed_size, unpack

MAX_LENGTH = 24  # the decoder peeks L bits from a 32-bit window at any bit offset: L + 7 <= 32
_CHUNK = 1 << 20


def code_lengths(counts: np.ndarray, max_length: int = 16) -> np.ndarray:
    """Optimal code lengths ``(alphabet,) int64`` for ``counts``, none above ``max_length``.

    Symbols with count 0 get length 0 (no codeword); a single used symbol gets length 1.
    """
    counts = np.asarray(counts).ravel()
    if counts.size and (counts.dtype.kind not in "ui" or counts.min() < 0):
        raise ConfigError(f"counts must be non-negative integers, got dtype {counts.dtype}")
    if isinstance(max_length, bool) or not 1 <= int(max_length) <= MAX_LENGTH:
        raise ConfigError(f"max_length must be in 1..{MAX_LENGTH}, got {max_length!r}")
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    n = used.size
    if n <= 1:
        lengths[used] = 1
        return lengths
    if n > 1 << int(max_length):
        raise ConfigError(
            f"{n} symbols cannot have codes of at most {max_length} bits (2**{max_length} "
            f"< {n}); raise max_length to >= {int(n - 1).bit_length()}"
        )
    order = used[np.argsort(counts[used], kind="stable")]
    lengths[order] = _package_merge(counts[order].astype(np.int64), min(int(max_length), n - 1))
    return lengths


def _package_merge(weights: np.ndarray, limit: int) -> np.ndarray:
    """Lengths for ascending ``weights`` ``(n,)``: ``limit`` package-and-merge rounds.

    Each round pairs adjacent items of the previous list into packages and merges them with
    the leaves; the final ``2n - 2`` smallest items are selected and each leaf gains one bit
    per list it is selected from. A selected prefix holds the ``k`` lightest leaves and
    ``m - k`` packages, which select the first ``2(m - k)`` items of the list before.
    """
    n = weights.size
    items, leaf_flags = weights, []
    kinds = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    for _ in range(limit - 1):
        packages = items[0 : items.size // 2 * 2 : 2] + items[1 : items.size // 2 * 2 : 2]
        merged = np.concatenate([weights, packages])
        order = np.argsort(merged, kind="stable")
        items = merged[order][: 2 * n - 2]
        leaf_flags.append(kinds[: merged.size][order][: 2 * n - 2])
    lengths = np.zeros(n, dtype=np.int64)
    m = 2 * n - 2
    for flags in reversed(leaf_flags):
        k = int(np.count_nonzero(flags[:m]))
        lengths[:k] += 1
        m = 2 * (m - k)
    lengths[:m] += 1
    return lengths


def kraft_sum(lengths: np.ndarray) -> float:
    """``sum over used symbols of 2**-length``; a decodable prefix code has it ``<= 1``."""
    used = np.asarray(lengths)[np.asarray(lengths) > 0].astype(np.float64)
    return float(np.sum(np.exp2(-used)))


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codewords ``(alphabet,) uint32`` for ``lengths`` (0 where length is 0).

    Sorted by ``(length, symbol)``, codeword ``i`` is ``start_i >> (L - l_i)`` with
    ``start_i = sum_{j<i} 2**(L - l_j)``, ``L = max(lengths)``.
    """
    lengths = np.asarray(lengths, dtype=np.int64).ravel()
    codes = np.zeros(lengths.size, dtype=np.uint32)
    used = np.flatnonzero(lengths)
    if used.size == 0:
        return codes
    top = int(lengths.max())
    if top > MAX_LENGTH or kraft_sum(lengths) > 1.0:
        raise ConfigError(
            f"code lengths are not a prefix code (max {top}, Kraft sum {kraft_sum(lengths)}); "
            f"need max <= {MAX_LENGTH} and Kraft sum <= 1"
        )
    order = used[np.lexsort((used, lengths[used]))]
    span = np.int64(1) << (top - lengths[order])
    start = np.cumsum(span) - span
    codes[order] = (start >> (top - lengths[order])).astype(np.uint32)
    return codes


def _block_log2(count: int) -> int:
    """Block size exponent: ~sqrt(count) * 4, clipped to 2**12..2**14 (offsets stay < 0.1%)."""
    return int(np.clip((max(count, 1) - 1).bit_length() // 2 + 2, 12, 14))


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Huffman-code ``symbols`` ``(count,)`` with the canonical code of ``lengths``."""
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        return b""
    lengths = np.asarray(lengths, dtype=np.int64).ravel()
    codes = canonical_codes(lengths)
    if symbols.dtype.kind not in "ui" or symbols.min() < 0 or symbols.max() >= lengths.size:
        raise ConfigError(f"symbols must be integers in 0..{lengths.size - 1}")
    lens = lengths.astype(np.uint8)[symbols]
    if not lens.all():
        bad = int(symbols[np.argmin(lens)])
        raise ConfigError(f"symbol {bad} has code length 0; count it when building lengths")
    log2b = _block_log2(symbols.size)
    block_bits = np.add.reduceat(lens, np.arange(0, symbols.size, 1 << log2b), dtype=np.int64)
    width = bit_width(int(block_bits.max()))
    head = bytes([log2b, width]) + pack(block_bits, width)
    return head + _bitstream(symbols, lens, codes, int(block_bits.sum()))


def _bitstream(symbols: np.ndarray, lens: np.ndarray, codes: np.ndarray, total: int) -> bytes:
    """Concatenate codewords MSB first: each lands in a 64-bit window over words w, w+1."""
    words = np.zeros(total // 32 + 2, dtype=np.uint64)
    base = 0
    for start in range(0, symbols.size, _CHUNK):
        ln = lens[start : start + _CHUNK].astype(np.int64)
        off = base + np.cumsum(ln) - ln
        base += int(ln.sum())
        word = off >> 5
        shift = (64 - (off & 31) - ln).astype(np.uint64)
        value = codes[symbols[start : start + _CHUNK]].astype(np.uint64) << shift
        first = np.flatnonzero(np.diff(word, prepend=-1))
        words[word[first]] += np.add.reduceat(value >> np.uint64(32), first)
        words[word[first] + 1] += np.add.reduceat(value & np.uint64(0xFFFFFFFF), first)
    return words.astype(">u4").tobytes()[: (total + 7) // 8]


def _parse_header(data: bytes, count: int) -> tuple[int, np.ndarray, int]:
    """``(log2 B, block bit offsets (blocks + 1,), header bytes)`` of an encoded stream."""
    if len(data) < 2 or not 12 <= data[0] <= 14 or not 1 <= data[1] <= 32:
        raise EncodingError("huffman stream header is missing or corrupt")
    log2b, width = data[0], data[1]
    blocks = -(-count // (1 << log2b))
    bits = unpack(data[2:], width, blocks).astype(np.int64)
    return log2b, np.concatenate([[0], np.cumsum(bits)]), 2 + packed_size(blocks, width)


def _table(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Lookup tables over every ``L``-bit peek: ``(symbol, length or 0 if invalid, L)``."""
    if lengths.size == 0 or lengths.max() > MAX_LENGTH or kraft_sum(lengths) > 1.0:
        raise EncodingError("stored Huffman code lengths do not form a prefix code")
    top = int(lengths.max())
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    span = np.int64(1) << (top - lengths[order])
    fill = (1 << top) - int(span.sum())
    sym = np.concatenate([np.repeat(order, span), np.zeros(fill, np.int64)]).astype(np.uint32)
    ln = np.concatenate([np.repeat(lengths[order], span), np.zeros(fill, np.int64)])
    return sym, ln, top


def decode(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`encode`: ``(count,) uint32``; ``EncodingError`` if corrupt."""
    if count == 0:
        if data:
            raise EncodingError(f"huffman stream of 0 symbols carries {len(data)} bytes")
        return np.zeros(0, dtype=np.uint32)
    lengths = np.asarray(lengths, dtype=np.int64).ravel()
    log2b, bounds, head = _parse_header(data, count)
    if len(data) - head != (int(bounds[-1]) + 7) // 8:
        raise EncodingError(
            f"huffman bitstream has {len(data) - head} bytes, its block index says "
            f"{(int(bounds[-1]) + 7) // 8}; the stream is truncated or corrupt"
        )
    sym, ln, top = _table(lengths)
    block = 1 << log2b
    pad = np.zeros(block * top // 8 + 8, np.uint8)
    raw = np.concatenate([np.frombuffer(data, np.uint8, offset=head), pad]).astype(np.uint32)
    window = raw[:-3] << 24 | raw[1:-2] << 16 | raw[2:-1] << 8 | raw[3:]
    pos = bounds[:-1].copy()
    out = np.empty((block, pos.size), dtype=np.uint32)
    last = count - (pos.size - 1) * block
    _lockstep(window, sym, ln, top, pos, out[:last])
    end_last = int(pos[-1])
    _lockstep(window, sym, ln, top, pos[:-1], out[last:, :-1])
    ends = np.append(pos[:-1], end_last)
    if not np.array_equal(ends, bounds[1:]):
        bad = int(np.flatnonzero(ends != bounds[1:])[0])
        raise EncodingError(
            f"huffman block {bad} ended at bit {int(ends[bad])}, its index says "
            f"{int(bounds[bad + 1])}; the bitstream or code lengths are corrupt"
        )
    return out.T.ravel()[:count]


def _lockstep(
    window: np.ndarray, sym: np.ndarray, ln: np.ndarray, top: int, pos: np.ndarray, out: np.ndarray
) -> None:
    """Decode ``out.shape[0]`` symbols in every lane; ``pos`` (lanes,) advances in place."""
    mask = (1 << top) - 1
    drop = 32 - top
    for row in out:
        peek = ((window[pos >> 3].astype(np.int64) << (pos & 7)) >> drop) & mask
        row[:] = sym[peek]
        pos += ln[peek]
