"""Neuron merging: exact oracles (duplicated and rescaled units), shapes, errors, and merging
beating plain removal on a trained MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import brainsurgeon as bs
from brainsurgeon.errors import ConfigError, UnsupportedLayerError
from brainsurgeon.structured import Group, Slice
from brainsurgeon.structured.chains import linear_chain_groups
from brainsurgeon.structured.merging import (
    data_free_merge,
    kim_merge,
    merge,
    prune_units,
)


def tiny(n_in=6, hidden=(8, 5), n_out=3, seed=0):
    torch.manual_seed(seed)
    return bs.build_model(f"mlp:{n_in}-{'-'.join(map(str, hidden))}-{n_out}", (n_in,), n_out)


def with_copies(model, copies):
    """Overwrite fc1 units ``j`` with ``c * unit k`` for each ``(j, k, c)`` in ``copies``."""
    with torch.no_grad():
        for j, k, c in copies:
            model.fc1.weight[j] = c * model.fc1.weight[k]
            model.fc1.bias[j] = c * model.fc1.bias[k]
    return model


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def fc1_only(model):
    return [g for g in linear_chain_groups(model) if g.name == "fc1"]


def test_linear_chain_groups_of_lenet300():
    model = bs.build_model("lenet300", (1, 28, 28), 10)
    groups = linear_chain_groups(model)
    assert [(g.name, g.units) for g in groups] == [("fc1", 300), ("fc2", 100)]
    assert groups[0].producers == (Slice("fc1", "weight", 0), Slice("fc1", "bias", 0))
    assert groups[0].consumers == (Slice("fc2", "weight", 1),)
    assert all(g.kind == "neuron" for g in groups)


@pytest.mark.parametrize("method", ["kim", "data-free"])
def test_identical_units_merge_exactly(method):
    # fc1 has 8 units; make 3 of them copies: removing 3 of 8 (amount 3/8) merges exactly
    model = with_copies(tiny(), [(1, 0, 1.0), (4, 2, 1.0), (7, 5, 1.0)])
    x = torch.randn(64, 6)
    # copies tie on any norm; Kim keeps the units the criterion ranks highest, so rank them
    scores = {"fc1": torch.tensor([1.0, 0, 1, 1, 0, 1, 1, 0])} if method == "kim" else "l2"
    groups = fc1_only(model)
    result = merge(model, 3 / 8, method=method, groups=groups, criterion=scores, threshold=0.99)
    assert result.model.fc1.out_features == 5 and result.merged == {"fc1": 3}
    assert torch.allclose(outputs(result.model, x), outputs(model, x), atol=1e-5)
    # the baseline removes the same number of units and does change the outputs
    pruned = prune_units(model, 3 / 8, groups=fc1_only(model)).model
    assert not torch.allclose(outputs(pruned, x), outputs(model, x), atol=1e-3)


def test_positive_multiples_merge_exactly_kim():
    model = with_copies(tiny(), [(1, 0, 0.3), (4, 2, 0.5), (7, 5, 0.2)])
    x = torch.randn(64, 6)
    # L2 keeps the larger originals; each copy is an exact positive multiple of one of them
    result = merge(model, 3 / 8, method="kim", groups=fc1_only(model))
    assert result.kept["fc1"].tolist() == [0, 2, 3, 5, 6]
    assert torch.allclose(outputs(result.model, x), outputs(model, x), atol=1e-5)


def test_kim_scaling_matrix_oracle():
    torch.manual_seed(1)
    w, b, nxt = torch.randn(4, 3), torch.randn(4), torch.randn(2, 4)
    w[3], b[3] = 2.5 * w[1], 2.5 * b[1]
    keep = torch.tensor([0, 1, 2])
    new_next, z = kim_merge(w, b, nxt, keep, threshold=0.5)
    expected = torch.eye(3, 4)
    expected[1, 3] = 2.5
    assert torch.allclose(z, expected, atol=1e-6)
    assert torch.allclose(new_next, nxt @ expected.T, atol=1e-6)
    # below the threshold nothing is merged: Z is the selection matrix
    _, z_none = kim_merge(w, b, nxt, torch.tensor([0, 2]), threshold=1.0)
    assert torch.equal(z_none, torch.eye(4)[[0, 2]])


def test_data_free_picks_least_saliency_pair():
    torch.manual_seed(2)
    w, nxt = torch.randn(5, 4), torch.randn(3, 5)
    w[4] = w[2] + 1e-3  # nearly identical pair: (2, 4) or (4, 2) merges first
    keep, new_next, pairs = data_free_merge(w, None, nxt, 1)
    i, j = pairs[0]
    assert {i, j} == {2, 4}
    brute = {
        (a, c): (nxt[:, c].square().sum() * (w[a] - w[c]).square().sum()).item()
        for a in range(5)
        for c in range(5)
        if a != c
    }
    assert (i, j) == min(brute, key=brute.get)
    expected = nxt.clone()
    expected[:, i] += nxt[:, j]
    assert torch.allclose(new_next, expected[:, keep])


@pytest.mark.parametrize("method", ["kim", "data-free", "prune"])
def test_shapes_and_parameter_count(method):
    model = tiny(n_in=10, hidden=(20, 10), n_out=4)
    before = [p.clone() for p in model.parameters()]
    if method == "prune":
        result = prune_units(model, 0.5)
    else:
        result = merge(model, 0.5, method=method)
    small = result.model
    assert (small.fc1.out_features, small.fc2.in_features, small.fc2.out_features) == (10, 10, 5)
    assert small.fc3.in_features == 5 and small.fc1.weight.shape == (10, 10)
    n_params = sum(p.numel() for p in small.parameters())
    assert n_params == (10 * 10 + 10) + (10 * 5 + 5) + (5 * 4 + 4)
    assert [len(k) for k in result.kept.values()] == [10, 5]
    assert small(torch.randn(3, 10)).shape == (3, 4)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_merging_beats_removal_on_trained_digits_mlp():
    # one small model can go either way (seeds 3 and 4 favour removal at 50%), so compare the
    # mean test accuracy of three trained models
    data = bs.data.load_data("digits", progress=False)
    acc = {"prune": 0.0, "kim": 0.0, "data-free": 0.0}
    for seed in range(3):
        torch.manual_seed(seed)
        model = bs.build_model("mlp:64-64-32-10", data.input_shape, data.num_classes)
        bs.fit(model, data, bs.TrainConfig(epochs=5, seed=seed), progress=False)
        acc["prune"] += bs.evaluate(prune_units(model, 0.5).model, data)["accuracy"] / 3
        for method in ("kim", "data-free"):
            small = merge(model, 0.5, method=method).model
            acc[method] += bs.evaluate(small, data)["accuracy"] / 3
    assert acc["kim"] > acc["prune"] + 0.02, acc
    assert acc["data-free"] > acc["prune"] + 0.02, acc


def test_refuses_removing_every_unit():
    model = tiny()
    with pytest.raises(ConfigError, match="would remove all 8 units of fc1; keep at least one"):
        merge(model, 1.0)
    with pytest.raises(ConfigError, match="would remove all 5 units of fc2"):
        prune_units(model, 0.95, groups=linear_chain_groups(model)[1:])
    with pytest.raises(ConfigError, match=r"amount must lie in \(0, 1\]"):
        merge(model, 0.0)


@pytest.mark.parametrize("method", ["kim", "data-free"])
def test_refuses_non_homogeneous_activation(method):
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(4, 6))
    model.add_module("act", nn.Tanh())
    model.add_module("fc2", nn.Linear(6, 2))
    with pytest.raises(UnsupportedLayerError, match="act \\(Tanh\\).*positively homogeneous"):
        merge(model, 0.5, method=method)
    assert prune_units(model, 0.5).model.fc1.out_features == 3  # removal needs no homogeneity


def test_bad_options_teach():
    model = tiny()
    with pytest.raises(ConfigError, match="unknown merge method 'svd'; valid: kim, data-free"):
        merge(model, 0.5, method="svd")
    with pytest.raises(ConfigError, match="unknown criterion 'taylor'; valid: l2, l1"):
        merge(model, 0.5, criterion="taylor")
    with pytest.raises(ConfigError, match=r"threshold is a cosine similarity in \[0, 1\]"):
        merge(model, 0.5, threshold=-0.1)
    with pytest.raises(ConfigError, match="data-free merging picks the units"):
        merge(model, 0.5, method="data-free", criterion="l1")
    with pytest.raises(ConfigError, match="no scores for group 'fc2'"):
        merge(model, 0.5, criterion={"fc1": torch.ones(8)})
    with pytest.raises(ConfigError, match=r"expected \(8,\), one per unit"):
        merge(model, 0.5, criterion={"fc1": torch.ones(3), "fc2": torch.ones(5)})


def test_criterion_scores_choose_the_kept_units():
    model = tiny()
    scores = {"fc1": torch.arange(8.0), "fc2": -torch.arange(5.0)}
    result = merge(model, 0.5, criterion=scores)
    assert result.kept["fc1"].tolist() == [4, 5, 6, 7]
    assert result.kept["fc2"].tolist() == [0, 1, 2]  # round(0.5 * 5) = 2 removed


def test_refuses_groups_it_cannot_rewrite():
    model = tiny()
    odd = Group("fc1", "neuron", 8, (Slice("fc1", "weight", 0),), (Slice("fc2", "weight", 0),))
    with pytest.raises(UnsupportedLayerError, match="one Linear's rows and the next Linear's"):
        merge(model, 0.5, groups=[odd])
