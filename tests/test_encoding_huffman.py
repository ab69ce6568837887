"""Canonical Huffman: lengths against a brute-force optimum, codewords, bitstream, corruption."""

from __future__ import annotations

import heapq
import itertools

import numpy as np
import pytest

from brainsurgeon.encoding import encode_stream, entropy_bits, huffman
from brainsurgeon.errors import ConfigError, EncodingError

RNG = np.random.default_rng(1)


def brute_force_cost(counts: np.ndarray, limit: int) -> int:
    """min sum(count * length) over every length vector in 1..limit obeying Kraft."""
    used = counts[counts > 0]
    if used.size == 1:
        return int(used[0])
    best = None
    for lengths in itertools.product(range(1, limit + 1), repeat=used.size):
        if sum(2.0**-l for l in lengths) <= 1.0:
            cost = int(np.dot(used, lengths))
            best = cost if best is None else min(best, cost)
    return best


def heap_huffman_cost(counts: np.ndarray) -> int:
    """Textbook Huffman: repeatedly merge the two lightest; cost = sum of merged weights."""
    heap = [int(c) for c in counts if c > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


CASES = [
    np.array([1, 1]),
    np.array([5, 0, 0, 1]),
    np.array([1, 2, 4, 8, 16, 32]),
    np.array([1, 1, 2, 3, 5, 8]),
    np.array([7, 7, 7, 7, 7]),
    np.array([1000, 1, 1, 1, 1, 1]),
    *[RNG.integers(0, 50, 6) for _ in range(6)],
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("limit", [3, 4, 6])
def test_lengths_match_brute_force_under_limit(case, limit):
    counts = CASES[case]
    n = int(np.count_nonzero(counts))
    if n > 1 << limit or n == 0:
        pytest.skip("infeasible or empty")
    lengths = huffman.code_lengths(counts, limit)
    assert lengths.max() <= limit
    assert np.all((lengths > 0) == (counts > 0))
    assert huffman.kraft_sum(lengths) <= 1.0
    assert int(np.dot(counts, lengths)) == brute_force_cost(counts, limit)


@pytest.mark.parametrize("seed", range(5))
def test_unlimited_lengths_match_textbook_huffman(seed):
    counts = np.random.default_rng(seed).geometric(0.05, 300)
    lengths = huffman.code_lengths(counts, 24)
    assert int(np.dot(counts, lengths)) == heap_huffman_cost(counts)
    assert huffman.kraft_sum(lengths) == pytest.approx(1.0)


def test_length_limit_binds_and_stays_optimal_vs_unlimited():
    counts = np.array([2**k for k in range(20)])  # unlimited Huffman wants length 19
    free = huffman.code_lengths(counts, 24)
    capped = huffman.code_lengths(counts, 8)
    assert free.max() == 19 and capped.max() == 8
    assert np.dot(counts, capped) >= np.dot(counts, free)
    assert huffman.kraft_sum(capped) <= 1.0


def test_edge_cases_of_lengths():
    assert huffman.code_lengths(np.zeros(4, np.int64)).tolist() == [0, 0, 0, 0]
    assert huffman.code_lengths(np.array([0, 9, 0])).tolist() == [0, 1, 0]
    full = huffman.code_lengths(np.ones(1 << 16, np.int64), 16)
    assert np.all(full == 16)
    with pytest.raises(ConfigError, match="raise max_length to >= 3"):
        huffman.code_lengths(np.ones(5, np.int64), 2)
    with pytest.raises(ConfigError, match="max_length"):
        huffman.code_lengths(np.ones(5, np.int64), 30)


def test_canonical_codes_are_prefix_free_and_canonical():
    lengths = np.array([3, 0, 2, 3, 2, 4, 4, 3])  # Kraft sum exactly 1
    codes = huffman.canonical_codes(lengths)
    words = {int(s): format(int(codes[s]), f"0{lengths[s]}b") for s in np.flatnonzero(lengths)}
    want = {2: "00", 4: "01", 0: "100", 3: "101", 7: "110", 5: "1110", 6: "1111"}
    assert words == want
    for a, b in itertools.permutations(words.values(), 2):
        assert not b.startswith(a)
    with pytest.raises(ConfigError, match="Kraft"):
        huffman.canonical_codes(np.array([1, 1, 1]))


def oracle_bits(symbols, lengths) -> str:
    codes = huffman.canonical_codes(lengths)
    return "".join(format(int(codes[s]), f"0{lengths[s]}b") for s in symbols)


def test_bitstream_matches_codeword_concatenation():
    symbols = RNG.choice(6, 9000, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05]).astype(np.uint32)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=6))
    data = huffman.encode(symbols, lengths)
    bits = oracle_bits(symbols, lengths)
    blocks = -(-symbols.size // (1 << data[0]))
    head = 2 + (blocks * data[1] + 7) // 8
    stream = "".join(format(b, "08b") for b in data[head:])
    assert stream[: len(bits)] == bits and set(stream[len(bits) :]) <= {"0"}
    np.testing.assert_array_equal(huffman.decode(data, lengths, symbols.size), symbols)


@pytest.mark.parametrize("count", [1, 2, 4095, 4096, 4097, 3 * 4096, 70001])
def test_round_trip_across_block_boundaries(count):
    symbols = RNG.choice(20, count).astype(np.uint32)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=20))
    data = huffman.encode(symbols, lengths)
    np.testing.assert_array_equal(huffman.decode(data, lengths, count), symbols)


def test_huffman_within_one_percent_of_entropy_near_four_bits():
    p = np.exp(-np.arange(64) / 7.0)
    symbols = RNG.choice(64, 200_000, p=p / p.sum()).astype(np.uint32)
    bits = entropy_bits(symbols, 64)
    assert 3.5 < bits / symbols.size < 4.5
    stream = encode_stream(symbols, 64, ("huffman",))
    assert stream.nbytes * 8 <= 1.01 * bits


def test_encode_rejects_symbols_without_code():
    with pytest.raises(ConfigError, match="symbol 2 has code length 0"):
        huffman.encode(np.array([0, 2], np.uint32), np.array([1, 1, 0]))


def test_decode_detects_corruption():
    symbols = RNG.choice(8, 30000).astype(np.uint32)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=8))
    data = huffman.encode(symbols, lengths)
    with pytest.raises(EncodingError, match="truncated or corrupt"):
        huffman.decode(data[:-1], lengths, symbols.size)
    with pytest.raises(EncodingError, match="header"):
        huffman.decode(b"\x03" + data[1:], lengths, symbols.size)
    with pytest.raises(EncodingError, match="prefix code"):
        huffman.decode(data, np.ones(8, np.int64), symbols.size)
    flipped = bytearray(data)
    flipped[2] ^= 0x01  # a block's recorded bit length changes
    with pytest.raises(EncodingError, match="corrupt"):
        huffman.decode(bytes(flipped), lengths, symbols.size)
    incomplete = np.where(np.arange(8) == 0, 4, lengths)  # a hole in the code space
    with pytest.raises(EncodingError):
        huffman.decode(data, incomplete, symbols.size)
    with pytest.raises(EncodingError, match="0 symbols"):
        huffman.decode(b"\x00", lengths, 0)
