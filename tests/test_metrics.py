"""Metrics against hand-computed values."""

from __future__ import annotations

import torch

from brainsurgeon.metrics import measure_latency, summarize
from brainsurgeon.models import build_model
from brainsurgeon.pruning.masks import set_mask


def test_small_mlp_by_hand():
    model = build_model("mlp:4-3-2", (1, 2, 2), 2)
    keep = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        model.fc1.weight.fill_(1.0)
    set_mask(model.fc1, "weight", keep)
    s = summarize(model, (1, 2, 2))
    fc1, fc2 = s["layers"]
    # fc1: 12 weights + 3 biases, 3 weights kept; biases are nonzero with probability 1
    assert fc1["params"] == 15 and fc1["nonzeros"] == 3 + int((model.fc1.bias != 0).sum())
    assert fc1["macs"] == 12 and fc1["nonzero_macs"] == 3
    assert fc2["params"] == 8 and fc2["macs"] == 6
    t = s["totals"]
    assert t["params"] == 23 and t["dense_bytes"] == 92 and t["flops"] == 36
    assert t["nonzero_flops"] == 2 * (3 + int((model.fc2.weight != 0).sum()))
    assert t["flop_counter_flops"] == 36  # torch.utils.flop_counter agrees on the dense count


def test_conv_flops_match_flop_counter():
    s = summarize(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    conv1 = s["layers"][0]
    assert conv1["macs"] == 24 * 24 * 20 * 25
    assert s["totals"]["flops"] == s["totals"]["flop_counter_flops"] == 4_586_000


def test_latency_reports_medians_and_threads():
    lat = measure_latency(build_model("lenet300", (1, 8, 8), 10), (1, 8, 8), min_run_time=0.01)
    assert lat["batch_1_ms"] > 0 and lat["batch_64_ms"] > 0
    assert lat["threads"] == torch.get_num_threads() and lat["device"] == "cpu"
