"""Order-0 entropy coding with ``constriction``'s ANS coder (reaches H where Huffman cannot).

Choice: ``constriction.stream.stack.AnsCoder`` (range variant of asymmetric numeral systems,
Duda 2013; 32-bit words, 24-bit probabilities). Measured on 20M skewed 5-bit symbols here:
ANS 0.13 s encode / 0.37 s decode at 1.000001 x entropy; the range coder
(``queue.RangeEncoder``) 0.10 s / 0.44 s at 1.00005 x. ANS is as fast, a little smaller,
and after decoding every symbol ``is_empty()`` must hold, a free integrity check.

Payload: ``[frequency table][compressed 32-bit words, little-endian]``. The model is the
per-symbol counts quantized to a total of ``~2**P`` (each used symbol keeps >= 1), stored
with :func:`~.tables.pack_table`; the decoder rebuilds the identical float model from these
integers. Only used symbols enter the model (no mass wasted on absent ones); a stream of one
distinct symbol stores the table alone (0 bits per symbol).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..errors import BrainsurgeonError, ConfigError, EncodingError, first_line
from .tables import pack_table, unpack_table

_INSTALL = "the 'ans' entropy coder needs the constriction package: pip install constriction"


def available() -> bool:
    """True when ``constriction`` can be imported."""
    try:
        import constriction  # noqa: F401
    except ImportError:
        return False
    return True


def _constriction() -> ModuleType:
    try:
        import constriction
    except ImportError:
        raise BrainsurgeonError(_INSTALL) from None
    return constriction


def quantize_counts(counts: np.ndarray, precision: int) -> np.ndarray:
    """``round(counts * 2**precision / sum)``, every nonzero count kept >= 1; ``(alphabet,)``."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return counts
    q = np.rint(counts * (float(1 << precision) / total)).astype(np.int64)
    return np.where(counts > 0, np.maximum(q, 1), 0)


def _precision(count: int) -> int:
    """Model precision in bits: ~log2(count)/2 + 4, in 8..16 (table cost vs. model mismatch)."""
    return int(np.clip(max(count, 1).bit_length() // 2 + 4, 8, 16))


def _model(freqs: np.ndarray) -> tuple[Any, np.ndarray]:
    """The categorical model over the used symbols, and those symbols ``(k,)``."""
    used = np.flatnonzero(freqs)
    probs = freqs[used].astype(np.float64)
    model = _constriction().stream.model.Categorical(probs / probs.sum(), perfect=False)
    return model, used


def encode(symbols: np.ndarray, alphabet: int) -> bytes:
    """ANS-code ``symbols`` ``(count,)`` in ``0..alphabet-1``; payload includes the model."""
    constriction = _constriction()
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        return b""
    if symbols.dtype.kind not in "ui" or symbols.min() < 0 or symbols.max() >= alphabet:
        raise ConfigError(f"symbols must be integers in 0..{alphabet - 1}")
    counts = np.bincount(symbols, minlength=alphabet)
    freqs = quantize_counts(counts, _precision(symbols.size))
    if np.count_nonzero(freqs) == 1:
        return pack_table(freqs)  # one used symbol: it is certain, 0 bits
    model, used = _model(freqs)
    rank = np.zeros(alphabet, dtype=np.int32)
    rank[used] = np.arange(used.size, dtype=np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(rank[symbols], model)
    words = coder.get_compressed().astype("<u4")
    return pack_table(freqs) + words.tobytes()


def decode(data: bytes, alphabet: int, count: int) -> np.ndarray:
    """Inverse of :func:`encode`: ``(count,) uint32``; ``EncodingError`` if corrupt."""
    constriction = _constriction()
    if count == 0:
        if data:
            raise EncodingError(f"ans stream of 0 symbols carries {len(data)} bytes")
        return np.zeros(0, dtype=np.uint32)
    freqs, head = unpack_table(data, alphabet)
    if not freqs.any():
        raise EncodingError("ans frequency table is empty but the stream has symbols")
    if (len(data) - head) % 4:
        raise EncodingError(f"ans payload of {len(data) - head} bytes is not whole 32-bit words")
    words = np.frombuffer(data, dtype="<u4", offset=head).astype(np.uint32)
    if np.count_nonzero(freqs) == 1:
        if words.size:
            raise EncodingError("ans stream of one certain symbol carries coded words")
        return np.full(count, np.flatnonzero(freqs)[0], dtype=np.uint32)
    model, used = _model(freqs)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        ranks = coder.decode(model, int(count))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # constriction's own errors, and its Rust panics (pyo3's
        # PanicException derives from BaseException), e.g. "capacity overflow" on bad words
        raise EncodingError(f"ans payload cannot be decoded: {first_line(err)}") from None
    if not coder.is_empty():
        raise EncodingError("ans payload is corrupt: data left over after decoding every symbol")
    return used[ranks].astype(np.uint32)
