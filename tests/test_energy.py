"""Energy and SRAM-fit estimate against hand computation (Horowitz 45 nm figures)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainsurgeon.errors import ConfigError
from brainsurgeon.metrics.energy import PJ, energy_report, parse_size, stored_bits
from brainsurgeon.pruning.masks import set_mask

MAC_FLOAT = 3.7 + 0.9
MAC_INT = 3.1 + 0.1


def tiny_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    keep = torch.zeros(3, 4, dtype=torch.bool)
    keep.view(-1)[:6] = True  # first six entries kept: every gap is 1, no fillers
    set_mask(model[1], "weight", keep)
    return model


def test_hand_computed_float_model_in_dram():
    rep = energy_report(tiny_mlp(), (4,))
    l1, l2 = rep["layers"]
    # layer 1: 6 nonzero MACs + 3 bias adds; sparse 6 * (32 + 5) = 222 bits -> 28 B, + 12 B bias
    assert (l1["macs"], l1["nonzeros"], l1["format"]) == (6, 6, "sparse")
    assert l1["compute_pj"] == pytest.approx(6 * MAC_FLOAT + 3 * 0.9)
    assert l1["stored_bytes"] == 28 + 12
    # layer 2: dense 6 * 32 = 192 bits beats sparse 222 -> 24 B, + 8 B bias
    assert (l2["macs"], l2["format"], l2["stored_bytes"]) == (6, "dense", 24 + 8)
    assert l2["compute_pj"] == pytest.approx(6 * MAC_FLOAT + 2 * 0.9)
    tot = rep["totals"]
    assert tot["stored_bytes"] == 72 and tot["weight_words_read"] == 18
    compute = 12 * MAC_FLOAT + 5 * 0.9
    assert tot["energy_pj"] == pytest.approx(compute + 18 * 640)
    assert tot["energy_pj_if_sram"] == pytest.approx(compute + 18 * 5)
    assert rep["sram"] == {"budget_bytes": None, "fits": False, "memory": "dram"}
    # dense float baseline: 18 weights * 4.6 + 5 adds; 23 params = 92 B = 23 words from DRAM
    assert rep["dense_fp32"]["stored_bytes"] == 92
    assert rep["dense_fp32"]["energy_pj"] == pytest.approx(18 * MAC_FLOAT + 5 * 0.9 + 23 * 640)


def test_sram_budget_switches_memory_cost():
    model = tiny_mlp()
    fits = energy_report(model, (4,), sram_bytes=72)
    assert fits["sram"]["fits"] and fits["sram"]["memory"] == "sram"
    assert fits["totals"]["memory_pj"] == pytest.approx(18 * PJ["sram_read"])
    short = energy_report(model, (4,), sram_bytes="71B")
    assert not short["sram"]["fits"]
    assert short["totals"]["memory_pj"] == pytest.approx(18 * PJ["dram_read"])
    assert fits["energy_saving"] > short["energy_saving"] * 10


def test_quantized_bits_use_integer_arithmetic_and_fewer_bits():
    rep = energy_report(tiny_mlp(), (4,), bits_per_weight={"1": 5, "3": 8})
    l1, l2 = rep["layers"]
    assert l1["compute_pj"] == pytest.approx(6 * MAC_INT + 3 * 0.1)
    # layer 1: sparse 6 * (5 + 5) = 60 bits -> 8 B vs dense 12 * 5 = 60 bits: dense wins ties
    assert l1["stored_bytes"] == 8 + 12
    assert l2["stored_bytes"] == 6 + 8  # dense 6 * 8 bits = 6 B
    assert l2["bits_per_weight"] == 8.0


def test_conv_counts_output_positions():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(18, 2))
    rep = energy_report(model, (1, 5, 5))
    conv, fc = rep["layers"]
    assert conv["positions"] == 9 and conv["macs"] == 18 * 9
    assert conv["flops"] == 2 * 18 * 9 + 2 * 9
    assert fc["positions"] == 1 and fc["macs"] == 36


def test_fillers_for_long_gaps():
    keep = torch.zeros(100, dtype=torch.bool)
    keep[0] = keep[99] = True
    # gap 99 with 5-bit (32) index fields: ceil(99/32) - 1 = 3 filler zeros -> 5 entries
    assert stored_bits(keep, 4, 5) == (5 * 9, "sparse")
    assert stored_bits(torch.zeros(10, dtype=torch.bool), 32, 5) == (0, "sparse")
    assert stored_bits(torch.ones(10, dtype=torch.bool), 32, 5) == (320, "dense")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("512KB", 512 * 1024),
        ("1MB", 1024**2),
        ("2 kib", 2048),
        ("100", 100),
        ("1.5KB", 1536),
        ("3B", 3),
        (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["512XB", "KB", "-1KB", "0", "", "lots"])
def test_parse_size_rejects_bad_sizes(text):
    with pytest.raises(ConfigError, match=r"--sram: cannot read .* e\.g\. --sram 512KB"):
        parse_size(text)


def test_bits_out_of_range_is_refused():
    with pytest.raises(ConfigError, match=r"bits_per_weight must lie in \(0, 32\]"):
        energy_report(tiny_mlp(), (4,), bits_per_weight=64)
