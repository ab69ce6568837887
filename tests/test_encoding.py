"""Bit packing, sparse positions, tables, streams and the ANS coder against brute-force oracles."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from brainsurgeon.encoding import (
    CODECS,
    EncodedStream,
    decode_stream,
    default_index_bits,
    dense_positions,
    encode_stream,
    entropy,
    entropy_bits,
    gap_decode,
    gap_encode,
    mask_pack,
    mask_unpack,
    pack,
    pack_table,
    position_bits,
    raw_width,
    unpack,
    unpack_table,
)
from brainsurgeon.errors import BrainsurgeonError, ConfigError, EncodingError

RNG = np.random.default_rng(0)


def peaked(n: int, alphabet: int = 32, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """``n`` symbols with p(s) ~ exp(-s / scale): k-means indices of a bell-shaped weight."""
    p = np.exp(-np.arange(alphabet) / scale)
    return np.random.default_rng(seed).choice(alphabet, n, p=p / p.sum()).astype(np.uint32)


# ---- bitpack -------------------------------------------------------------------------------


def oracle_pack(codes, width: int) -> bytes:
    bits = "".join(format(int(c), f"0{width}b") for c in codes)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 31, 32])
def test_pack_matches_bit_string_oracle(width):
    codes = RNG.integers(0, 1 << width, 53, dtype=np.uint64).astype(np.uint32)
    codes[:2] = [0, (1 << width) - 1]
    data = pack(codes, width)
    assert data == oracle_pack(codes, width)
    np.testing.assert_array_equal(unpack(data, width, codes.size), codes)


def test_pack_round_trips_across_chunks():
    codes = RNG.integers(0, 32, (1 << 20) + 13).astype(np.uint32)
    np.testing.assert_array_equal(unpack(pack(codes, 5), 5, codes.size), codes)


def test_pack_empty_and_errors():
    assert pack(np.zeros(0, np.uint32), 7) == b""
    assert unpack(b"", 7, 0).size == 0
    with pytest.raises(ConfigError, match="does not fit in 3 bits"):
        pack(np.array([8]), 3)
    with pytest.raises(ConfigError, match="1..32"):
        pack(np.array([1]), 0)
    with pytest.raises(EncodingError, match="truncated: 9 codes of 5 bits need 6 bytes"):
        unpack(b"\x00" * 5, 5, 9)


# ---- positions -----------------------------------------------------------------------------


def oracle_gaps(mask: np.ndarray, width: int):
    """Han et al.'s relative indices written as a loop: a filler each time the gap overflows."""
    reach, prev, gaps, filler = 1 << width, -1, [], []
    for p in np.flatnonzero(mask):
        while p - prev > reach:
            prev += reach
            gaps.append(reach - 1)
            filler.append(True)
        gaps.append(p - prev - 1)
        filler.append(False)
        prev = p
    return np.array(gaps, dtype=np.int64), np.array(filler, dtype=bool)


MASKS = {
    "random": RNG.random(1000) < 0.1,
    "all_true": np.ones(77, bool),
    "all_false": np.zeros(77, bool),
    "empty": np.zeros(0, bool),
    "last_only": np.eye(1, 300, 299, dtype=bool)[0],
    "first_only": np.eye(1, 300, 0, dtype=bool)[0],
    "max_gap_5bit": np.isin(np.arange(200), [31, 63, 95]),  # gaps of exactly 32: no filler
    "overflow_5bit": np.isin(np.arange(200), [32, 97, 199]),  # gaps 33, 65, 102: fillers
}


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("width", [1, 3, 5, 8, 16])
def test_gap_encode_matches_han_loop_and_round_trips(name, width):
    mask = MASKS[name]
    gaps, filler = gap_encode(mask, width)
    want_gaps, want_filler = oracle_gaps(mask, width)
    np.testing.assert_array_equal(gaps, want_gaps)
    np.testing.assert_array_equal(filler, want_filler)
    assert gaps.size == 0 or gaps.max() < 1 << width
    pos = gap_decode(gaps, mask.size)
    np.testing.assert_array_equal(pos[~filler], np.flatnonzero(mask))
    assert not mask[pos[filler]].any()  # fillers sit on pruned entries, coded as zero
    assert position_bits(mask, "gaps", width) == gaps.size * width


def test_gap_fillers_exact_counts():
    mask = MASKS["overflow_5bit"]
    gaps, filler = gap_encode(mask, 5)
    # 33 -> 1 filler, 65 -> 2 fillers, 102 -> 3 fillers
    assert filler.sum() == 6 and (~filler).sum() == 3
    np.testing.assert_array_equal(gap_encode(MASKS["max_gap_5bit"], 5)[0], [31, 31, 31])


def test_gap_decode_out_of_range_and_bad_width():
    with pytest.raises(EncodingError, match="reach position 10 but the tensor has 10"):
        gap_decode(np.array([3, 6], np.uint32), 10)
    with pytest.raises(ConfigError, match="index width"):
        gap_encode(np.ones(3, bool), 0)
    with pytest.raises(ConfigError, match="boolean"):
        gap_encode(np.ones(3), 5)


@pytest.mark.parametrize("name", sorted(MASKS))
def test_bitmask_round_trip(name):
    mask = MASKS[name]
    data = mask_pack(mask)
    assert len(data) == (mask.size + 7) // 8 == position_bits(mask, "bitmask") // 8
    np.testing.assert_array_equal(mask_unpack(data, mask.size), mask)


def test_bitmask_errors_dense_and_defaults():
    with pytest.raises(EncodingError, match="needs 2 bytes, got 1"):
        mask_unpack(b"\x00", 9)
    with pytest.raises(EncodingError, match="padding bits"):
        mask_unpack(b"\x00\x01", 9)
    np.testing.assert_array_equal(dense_positions(4), [0, 1, 2, 3])
    assert position_bits(np.ones(9, bool), "dense") == 0
    assert default_index_bits("linear") == 5 and default_index_bits("conv") == 8
    with pytest.raises(ConfigError, match="valid: conv, linear"):
        default_index_bits("lstm")
    with pytest.raises(ConfigError, match="valid: dense, bitmask, gaps"):
        position_bits(np.ones(3, bool), "csr")


# ---- tables --------------------------------------------------------------------------------


@pytest.mark.parametrize("alphabet,used", [(1, 1), (32, 32), (32, 3), (1 << 16, 5), (1 << 16, 0)])
def test_table_round_trip_dense_and_sparse(alphabet, used):
    values = np.zeros(alphabet, np.int64)
    values[RNG.choice(alphabet, used, replace=False)] = RNG.integers(1, 5000, used)
    data = pack_table(values)
    back, end = unpack_table(data + b"tail", alphabet)
    np.testing.assert_array_equal(back, values)
    assert end == len(data)
    if alphabet == 1 << 16:
        assert len(data) < 64  # the sparse layout wins for a few symbols of a large alphabet


def test_table_corrupt():
    with pytest.raises(EncodingError, match="header"):
        unpack_table(b"\x07\x05", 32)
    with pytest.raises(EncodingError, match="truncated"):
        unpack_table(pack_table(np.arange(32))[:-1], 32)


# ---- streams and codecs --------------------------------------------------------------------

STREAMS = {
    "empty": (np.zeros(0, np.uint32), 32),
    "one": (np.array([7], np.uint32), 32),
    "all_equal": (np.full(5000, 3, np.uint32), 32),
    "alphabet_1": (np.zeros(100, np.uint32), 1),
    "binary": ((RNG.random(3000) < 0.05).astype(np.uint32), 2),
    "peaked": (peaked(20000), 32),
    "uniform": (RNG.integers(0, 32, 9000).astype(np.uint32), 32),
    "alphabet_2_16": (RNG.integers(0, 1 << 16, 30000).astype(np.uint32), 1 << 16),
    "alphabet_2_16_sparse": (RNG.choice([0, 9, 65535], 30000).astype(np.uint32), 1 << 16),
}


@pytest.mark.parametrize("codec", ["raw", "huffman", "ans"])
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_codec_round_trips(name, codec):
    symbols, alphabet = STREAMS[name]
    stream = encode_stream(symbols, alphabet, (codec,))
    assert stream.codec == codec
    rebuilt = EncodedStream(
        stream.codec, stream.count, stream.alphabet, stream.payload, stream.meta
    )
    np.testing.assert_array_equal(decode_stream(rebuilt), symbols)
    assert EncodedStream.from_bytes(stream.to_bytes()) == stream


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_chosen_codec_is_smallest(name):
    symbols, alphabet = STREAMS[name]
    chosen = encode_stream(symbols, alphabet)
    sizes = {c: encode_stream(symbols, alphabet, (c,)).nbytes for c in ("raw", "huffman", "ans")}
    assert chosen.nbytes == min(sizes.values())
    simplest = next(c for c in ("raw", "huffman", "ans") if sizes[c] == chosen.nbytes)
    assert chosen.codec == simplest
    np.testing.assert_array_equal(decode_stream(chosen), symbols)


def test_raw_size_and_entropy_bits_oracle():
    symbols = np.array([0, 0, 1, 2], np.uint32)
    assert entropy_bits(symbols, 3) == pytest.approx(2 * 1 + 2 * 2)  # -sum log2 p
    assert raw_width(1) == 0 and raw_width(2) == 1 and raw_width(32) == 5 and raw_width(33) == 6
    assert encode_stream(np.zeros(10, np.uint32), 1, ("raw",)).nbytes == 0
    assert encode_stream(STREAMS["uniform"][0], 32, ("raw",)).nbytes == 9000 * 5 // 8


def test_ans_within_half_percent_of_entropy():
    symbols = peaked(200_000, scale=0.6, seed=1)
    bound = entropy_bits(symbols, 32) / 8
    stream = encode_stream(symbols, 32, ("ans",))
    assert bound < 200_000 / 8  # skewed: Huffman's 1-bit floor binds here
    assert stream.nbytes <= 1.005 * bound
    assert encode_stream(symbols, 32, ("huffman",)).nbytes > 1.05 * bound


@pytest.mark.parametrize("codec", ["raw", "huffman", "ans"])
def test_truncated_payload_raises(codec):
    symbols = peaked(20000)
    stream = encode_stream(symbols, 32, (codec,))
    for cut in (1, 4, len(stream.payload) // 2):
        short = EncodedStream(codec, stream.count, 32, stream.payload[:-cut], {})
        with pytest.raises(EncodingError):
            decode_stream(short)


@pytest.mark.parametrize("codec", ["huffman", "ans"])
def test_corrupted_payload_raises(codec):
    stream = encode_stream(peaked(20000), 32, (codec,))
    data = bytearray(stream.payload)
    data[len(data) // 2] ^= 0x5A
    with pytest.raises(EncodingError):
        decode_stream(EncodedStream(codec, stream.count, 32, bytes(data), {}))


def test_stream_argument_errors():
    with pytest.raises(ConfigError, match=r"0\.\.31 \(alphabet 32\), found 32"):
        encode_stream(np.array([32]), 32)
    with pytest.raises(ConfigError, match="valid: ans, huffman, raw"):
        encode_stream(np.array([1]), 32, ("zstd",))
    with pytest.raises(ConfigError, match="integers"):
        encode_stream(np.array([0.5]), 32)
    with pytest.raises(EncodingError, match="header is corrupt"):
        EncodedStream.from_bytes(b"\x00\x00\x00\x03abc")
    assert set(CODECS.names()) >= {"raw", "huffman", "ans"}


def test_missing_constriction(monkeypatch):
    monkeypatch.setitem(sys.modules, "constriction", None)
    assert not entropy.available()
    with pytest.raises(BrainsurgeonError, match="pip install constriction"):
        entropy.encode(np.array([1, 2]), 4)
    assert encode_stream(peaked(1000), 32).codec in {"raw", "huffman"}


def test_property_round_trip():
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hypothesis.settings(max_examples=25, deadline=None)
    @hypothesis.given(
        st.integers(1, 300).flatmap(
            lambda a: st.tuples(st.just(a), st.lists(st.integers(0, a - 1), max_size=300))
        ),
        st.integers(1, 9),
    )
    def check(case, width):
        alphabet, values = case
        symbols = np.array(values, dtype=np.uint32)
        for codec in ("raw", "huffman", "ans"):
            stream = encode_stream(symbols, alphabet, (codec,))
            np.testing.assert_array_equal(decode_stream(stream), symbols)
        mask = symbols % 3 == 0
        gaps, filler = gap_encode(mask, width)
        np.testing.assert_array_equal(gap_decode(gaps, mask.size)[~filler], np.flatnonzero(mask))

    check()
