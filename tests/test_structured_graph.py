"""find_groups: the coupled tensors of every pattern, and masks that equal surgery."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from brainsurgeon import build_model
from brainsurgeon.errors import ConfigError, UnsupportedLayerError
from brainsurgeon.structured import apply_unit_mask, find_groups, register_rule, shrink
from brainsurgeon.structured.groups import Slice
from brainsurgeon.structured.rules import FUNCTION_RULES, MODULE_RULES
from structured_models import PATTERNS, built, by_name, expected_numel, random_keeps


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_masked_model_equals_shrunk_model(pattern):
    model, x = built(pattern)
    groups = find_groups(model, x)
    keeps = random_keeps(groups, seed=1)
    masked = copy.deepcopy(model)
    for g, keep in keeps.items():
        apply_unit_mask(masked, g, keep)
    shrunk = shrink(copy.deepcopy(model), keeps)
    with torch.no_grad():
        assert not torch.allclose(model(x), masked(x), atol=1e-4)  # units really went
        torch.testing.assert_close(shrunk(x), masked(x), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in shrunk.parameters()) == expected_numel(model, keeps)


def test_chain_groups_are_the_hidden_layers_only():
    model, x = built("mlp")
    groups = by_name(find_groups(model, x))
    assert list(groups) == ["fc1", "fc2"]  # fc3 feeds the output: not removable
    assert groups["fc1"].producers == (Slice("fc1", "weight", 0), Slice("fc1", "bias", 0))
    assert groups["fc1"].consumers == (Slice("fc2", "weight", 1),)


def test_conv_bn_and_flatten_couple_norm_and_hw_columns():
    model, x = built("conv_flatten")
    groups = by_name(find_groups(model, x))
    assert Slice("bn1", "running_var", 0) in groups["conv1"].producers
    assert groups["conv1"].consumers == (Slice("conv2", "weight", 1),)
    assert groups["conv2"].consumers == (Slice("fc1", "weight", 1, unit_size=9),)
    assert find_groups(model, x, granularity="channel") == [groups["conv1"], groups["conv2"]]


def test_residual_additions_make_one_group_with_both_producers():
    model, x = built("resnet8")
    groups = by_name(find_groups(model, x))
    stem = groups["conv1"]
    modules = {s.module for s in stem.producers}
    assert {"conv1", "bn1", "layer1.conv2", "layer1.bn2"} <= modules
    assert {s.module for s in stem.consumers} == {
        "layer1.conv1",
        "layer2.conv1",
        "layer2.shortcut.0",
    }
    assert {s.module for s in groups["layer3.conv2"].producers} >= {"layer3.shortcut.0"}
    assert "layer1.conv2" not in groups  # merged into the stem's group
    mlp = by_name(find_groups(*built("residual")))
    assert set(mlp) == {"fc_in", "fc_a"}
    assert Slice("fc_b", "weight", 0) in mlp["fc_in"].producers


def test_concatenation_offsets_the_consumer_columns():
    model, x = built("concat")
    groups = by_name(find_groups(model, x))
    assert Slice("mix", "weight", 1, offset=4) in groups["b"].consumers
    assert Slice("bn", "weight", 0, offset=4) in groups["b"].producers
    assert Slice("mix", "weight", 1) in groups["a"].consumers


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_heads_are_units(batch_first):
    model, x = built("attention", batch_first=batch_first)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    (heads,) = find_groups(model, x, granularity="head")
    assert (heads.name, heads.units) == ("attn", 4)
    offsets = [s.offset for s in heads.producers if s.tensor == "in_proj_weight"]
    assert offsets == [0, 8, 16] and heads.producers[0].unit_size == 2
    assert heads.consumers == (Slice("attn.out_proj", "weight", 1, unit_size=2),)
    keep = torch.tensor([True, False, True, False])
    masked = apply_unit_mask(copy.deepcopy(model), heads, keep)
    shrunk = shrink(copy.deepcopy(model), {heads: keep})
    assert shrunk.attn.num_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), masked(x), atol=1e-5, rtol=1e-5)
    assert find_groups(model, x, granularity="neuron") == []  # proj feeds the attention


def test_encoder_layer_gives_heads_and_feed_forward_neurons():
    model, x = built("encoder")
    groups = by_name(find_groups(model, x))
    assert set(groups) == {"layer.self_attn", "layer.linear1"}
    assert groups["layer.linear1"].consumers == (Slice("layer.linear2", "weight", 1),)
    names = {g.name for g in find_groups(*built("stack"))}
    assert names == {f"encoder.layers.{i}.{m}" for i in (0, 1) for m in ("self_attn", "linear1")}


def test_layer_norm_over_units_is_sliced_and_refuses_masks():
    torch.manual_seed(0)
    model, x = build_model("structured_models:norm", (6,), 3).eval(), torch.randn(4, 6)
    (group,) = find_groups(model, x)
    assert Slice("ln", "weight", 0) in group.producers
    keep = torch.arange(12) % 3 != 0
    with pytest.raises(UnsupportedLayerError, match="normalized by LayerNorm ln"):
        apply_unit_mask(copy.deepcopy(model), group, keep)
    with torch.no_grad():  # oracle: the same computation on the kept units by hand
        h = nn.functional.linear(x, model.fc1.weight[keep], model.fc1.bias[keep])
        h = nn.functional.layer_norm(h, (8,), model.ln.weight[keep], model.ln.bias[keep])
        want = nn.functional.linear(torch.relu(h), model.fc2.weight[:, keep], model.fc2.bias)
        got = shrink(model, {group: keep})(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert model.ln.normalized_shape == (8,)


class MatmulNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(torch.matmul(h, torch.ones(6, 6)))


def test_unknown_op_on_units_is_refused_by_name():
    with pytest.raises(UnsupportedLayerError, match=r"cannot follow torch.matmul at node 'matmul'"):
        find_groups(MatmulNet(), torch.randn(2, 4))
    with pytest.raises(
        UnsupportedLayerError,
        match=r"at node 'matmul' \(block\): .*register_rule\(torch.matmul, rule\)",
    ):
        find_groups(nn.Sequential(OrderedDict(block=MatmulNet())), torch.randn(2, 4))
    register_rule(torch.matmul, "pin")
    try:
        assert find_groups(MatmulNet(), torch.randn(2, 4)) == []  # fc1's units stay
    finally:
        del FUNCTION_RULES[torch.matmul]


class Gate(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def forward(self, x):
        return x if x.sum() > 0 else -x


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.gate, self.fc2 = nn.Linear(4, 6), Gate(), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(self.gate(self.fc1(x)))


def test_untraceable_layer_names_itself_and_a_rule_fixes_it(monkeypatch):
    with pytest.raises(UnsupportedLayerError, match=r"cannot trace Gate 'gate'.*register_rule"):
        find_groups(Gated(), torch.randn(2, 4))
    chain = nn.Sequential(nn.Linear(4, 6), Gate(), nn.Linear(6, 2))
    with pytest.raises(UnsupportedLayerError, match=r"cannot follow Gate '1'"):
        find_groups(chain, torch.randn(2, 4))  # the plain-chain fallback reaches Gate
    monkeypatch.setitem(MODULE_RULES, Gate, MODULE_RULES[nn.ReLU])
    assert [g.name for g in find_groups(Gated(), torch.randn(2, 4))] == ["fc1"]
    monkeypatch.delitem(MODULE_RULES, Gate)
    register_rule(Gate, "pin")
    try:
        assert find_groups(Gated(), torch.randn(2, 4)) == []
    finally:
        del MODULE_RULES[Gate]


def test_group_norm_keeps_its_channels_with_a_warning():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))
    with pytest.warns(UserWarning, match="GroupNorm 1 mixes the channels"):
        assert find_groups(model, torch.randn(1, 1, 5, 5)) == []


def test_bad_granularity_and_keep_are_refused():
    model, x = built("mlp")
    with pytest.raises(ConfigError, match="valid: neuron, channel, head"):
        find_groups(model, x, granularity="filter")
    fc1 = find_groups(model, x)[0]
    with pytest.raises(ConfigError, match="would remove all 32 units of fc1; keep at least one"):
        shrink(model, {fc1: torch.zeros(32, dtype=torch.bool)})
    with pytest.raises(ConfigError, match=r"bool tensor of shape \(32,\)"):
        apply_unit_mask(model, fc1, torch.ones(31, dtype=torch.bool))


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return {"logits": self.fc3(h), "features": h}


def test_dict_outputs_pin_every_returned_tensor():
    assert [g.name for g in find_groups(DictOut(), torch.randn(2, 4))] == ["fc1"]
