"""The per-stream front end: code one symbol stream with the smallest registered codec.

A stream is ``count`` integers in ``0..alphabet-1`` (k-means indices, gap fields, ...).
:func:`encode_stream` tries each allowed codec and keeps the smallest, ties going to the
simplest (registration order: raw, huffman, ans). What it stores is an
:class:`EncodedStream`: ``codec``, ``count``, ``alphabet`` (kept by the container), a binary
``payload`` and a JSON-able ``meta`` dict; every codec here puts all it needs, code tables
included, in ``payload`` and leaves ``meta`` empty. Another codec registers in ``CODECS``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError, EncodingError
from ..registry import Registry
from . import entropy, huffman
from .bitpack import pack, packed_size, unpack
from .tables import pack_table, unpack_table


class Codec(Protocol):
    """Turns a stream into ``(payload, meta)`` and back; ``available()`` if usable here.

    ``simplicity`` breaks size ties: the lowest wins (raw 0, huffman 1, ans 2).
    """

    simplicity: int

    def available(self) -> bool: ...

    def encode(self, symbols: np.ndarray, alphabet: int) -> tuple[bytes, dict]: ...

    def decode(self, payload: bytes, meta: dict, count: int, alphabet: int) -> np.ndarray: ...


CODECS: Registry[Codec] = Registry("codec")
DEFAULT_CODECS = ("raw", "huffman", "ans")


@dataclass(frozen=True)
class EncodedStream:
    """One coded stream. ``nbytes = len(payload) + len(compact JSON of meta)``."""

    codec: str
    count: int
    alphabet: int
    payload: bytes
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes stored for this stream beyond ``codec``, ``count`` and ``alphabet``."""
        return len(self.payload) + len(_json(self.meta))

    def to_bytes(self) -> bytes:
        """Self-describing blob: 4-byte big-endian header length, JSON header, payload."""
        head = _json(
            {"codec": self.codec, "count": self.count, "alphabet": self.alphabet, "meta": self.meta}
        )
        return len(head).to_bytes(4, "big") + head + self.payload

    @classmethod
    def from_bytes(cls, blob: bytes) -> EncodedStream:
        """Inverse of :meth:`to_bytes`."""
        size = int.from_bytes(blob[:4], "big")
        try:
            head = json.loads(blob[4 : 4 + size])
            return cls(
                head["codec"], head["count"], head["alphabet"], blob[4 + size :], head["meta"]
            )
        except (ValueError, KeyError, TypeError) as err:
            raise EncodingError(f"encoded stream header is corrupt: {err}") from None


def _json(meta: dict) -> bytes:
    return json.dumps(meta, separators=(",", ":"), sort_keys=True).encode() if meta else b""


def raw_width(alphabet: int) -> int:
    """``ceil(log2(alphabet))`` bits per symbol (0 when ``alphabet == 1``)."""
    return (int(alphabet) - 1).bit_length()


def entropy_bits(symbols: np.ndarray, alphabet: int) -> float:
    """Order-0 entropy of the stream times its length: ``sum_s c_s * log2(count / c_s)``."""
    counts = np.bincount(_check_symbols(symbols, alphabet), minlength=int(alphabet))
    used = counts[counts > 0].astype(np.float64)
    return float(np.sum(used * np.log2(used.sum() / used))) if used.size else 0.0


def _check_symbols(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    symbols = np.asarray(symbols).ravel()
    if isinstance(alphabet, bool) or int(alphabet) != alphabet or not 1 <= alphabet <= 1 << 32:
        raise ConfigError(f"alphabet must be an integer in 1..2**32, got {alphabet!r}")
    if symbols.size and symbols.dtype.kind not in "ui":
        raise ConfigError(f"symbols must be integers, got dtype {symbols.dtype}")
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        found = int(symbols.min()) if symbols.min() < 0 else int(symbols.max())
        raise ConfigError(
            f"symbols must lie in 0..{alphabet - 1} (alphabet {alphabet}), found {found}"
        )
    return symbols


def encode_stream(
    symbols: np.ndarray, alphabet: int, codecs: Sequence[str] = DEFAULT_CODECS
) -> EncodedStream:
    """Code ``symbols`` ``(count,)`` with the smallest of ``codecs`` (unavailable ones skipped)."""
    symbols = _check_symbols(symbols, alphabet)
    if isinstance(codecs, str) or not codecs:
        raise ConfigError(f"codecs must be a non-empty sequence of names, got {codecs!r}")
    candidates = []
    for name in dict.fromkeys(codecs):
        codec = CODECS.get(name)
        if codec.available():
            payload, meta = codec.encode(symbols, int(alphabet))
            stream = EncodedStream(name, int(symbols.size), int(alphabet), payload, meta)
            candidates.append((stream.nbytes, codec.simplicity, stream))
    if not candidates:
        raise ConfigError(f"none of the codecs {list(codecs)} is available here; add 'raw'")
    return min(candidates, key=lambda c: c[:2])[2]


def decode_stream(stream: EncodedStream) -> np.ndarray:
    """Inverse of :func:`encode_stream`: the symbols ``(count,) uint32``."""
    codec = CODECS.get(stream.codec)
    if stream.count < 0:
        raise EncodingError(f"stream count must be >= 0, got {stream.count}")
    return codec.decode(stream.payload, dict(stream.meta), int(stream.count), int(stream.alphabet))


class _Raw:
    """Fixed width ``ceil(log2 alphabet)`` bits per symbol."""

    simplicity = 0

    def available(self) -> bool:
        return True

    def encode(self, symbols: np.ndarray, alphabet: int) -> tuple[bytes, dict]:
        width = raw_width(alphabet)
        return (pack(symbols, width) if width else b""), {}

    def decode(self, payload: bytes, meta: dict, count: int, alphabet: int) -> np.ndarray:
        width = raw_width(alphabet)
        if len(payload) != packed_size(count, width):
            raise EncodingError(
                f"raw stream of {count} symbols at {width} bits needs "
                f"{packed_size(count, width)} bytes, got {len(payload)}"
            )
        if width == 0:
            return np.zeros(count, dtype=np.uint32)
        out = unpack(payload, width, count)
        if count and out.max() >= alphabet:
            raise EncodingError(f"raw stream holds symbol {int(out.max())} >= alphabet {alphabet}")
        return out


class _Huffman:
    """Canonical length-limited Huffman; payload = code-length table + block-indexed bits."""

    simplicity = 1

    def available(self) -> bool:
        return True

    def encode(self, symbols: np.ndarray, alphabet: int) -> tuple[bytes, dict]:
        if symbols.size == 0:
            return b"", {}
        limit = min(huffman.MAX_LENGTH, max(16, (alphabet - 1).bit_length()))
        lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet), limit)
        return pack_table(lengths) + huffman.encode(symbols, lengths), {}

    def decode(self, payload: bytes, meta: dict, count: int, alphabet: int) -> np.ndarray:
        if count == 0:
            return huffman.decode(payload, np.zeros(0, np.int64), 0)
        lengths, head = unpack_table(payload, alphabet)
        return huffman.decode(payload[head:], lengths, count)


class _Ans:
    """constriction's ANS coder with a quantized order-0 model (see ``entropy``)."""

    simplicity = 2

    def available(self) -> bool:
        return entropy.available()

    def encode(self, symbols: np.ndarray, alphabet: int) -> tuple[bytes, dict]:
        return entropy.encode(symbols, alphabet), {}

    def decode(self, payload: bytes, meta: dict, count: int, alphabet: int) -> np.ndarray:
        return entropy.decode(payload, alphabet, count)


CODECS.register("raw", "fixed width ceil(log2 alphabet) bits per symbol")(_Raw())
CODECS.register("huffman", "canonical length-limited Huffman, block-indexed for fast decode")(
    _Huffman()
)
CODECS.register("ans", "order-0 ANS entropy coder (constriction), within ~0.1% of entropy")(_Ans())
