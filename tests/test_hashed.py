"""HashedNets layer: hash reproducibility, virtual weights, gradients, training, save/load."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from brainsurgeon.errors import ConfigError
from brainsurgeon.models import build_model
from brainsurgeon.models.hashed import HashedLinear, hash_indices
from brainsurgeon.runs import load_run, save
from brainsurgeon.training import TrainConfig, evaluate, fit


def test_hash_is_reproducible_from_seed():
    a, b = HashedLinear(20, 7, compression=3, seed=5), HashedLinear(20, 7, compression=3, seed=5)
    assert torch.equal(a.index, b.index) and torch.equal(a.sign, b.sign)
    c = HashedLinear(20, 7, compression=3, seed=6)
    assert not torch.equal(a.index, c.index)
    # the fixed hash does not depend on torch's global RNG
    torch.manual_seed(123)
    d = HashedLinear(20, 7, compression=3, seed=5)
    assert torch.equal(a.index, d.index) and torch.equal(a.sign, d.sign)


def test_hash_values_spread_over_buckets_and_signs():
    index, sign = hash_indices(100, 100, 1000, seed=0)
    assert index.min() >= 0 and index.max() < 1000
    counts = torch.bincount(index.flatten(), minlength=1000)
    assert (counts > 0).float().mean() > 0.99  # ~10 virtual weights per bucket
    assert set(sign.unique().tolist()) == {-1.0, 1.0}
    assert 0.47 < (sign > 0).float().mean().item() < 0.53


def test_bucket_count_and_compression_factor():
    layer = HashedLinear(30, 10, compression=7, seed=0)
    assert layer.n_buckets == math.ceil(300 / 7) == 43
    assert layer.compression_factor == pytest.approx(300 / 43)
    assert sum(p.numel() for p in layer.parameters()) == 43 + 10
    assert sorted(layer.state_dict()) == ["bias", "hashed_weight"]


def test_virtual_weight_and_forward_match_the_definition():
    torch.manual_seed(0)
    layer = HashedLinear(6, 4, compression=2, seed=1)
    w = layer.hashed_weight.detach()
    expected = torch.empty(4, 6)
    for i in range(4):
        for j in range(6):
            expected[i, j] = layer.sign[i, j] * w[layer.index[i, j]]
    assert torch.equal(layer.weight.detach(), expected)
    x = torch.randn(5, 6)
    assert torch.allclose(layer(x), x @ expected.T + layer.bias.detach(), atol=1e-6)


def test_bucket_gradient_sums_signed_virtual_gradients():
    torch.manual_seed(0)
    layer = HashedLinear(8, 5, compression=4, seed=2)
    x, y = torch.randn(7, 8), torch.randint(0, 5, (7,))
    F.cross_entropy(layer(x), y).backward()
    # oracle: gradient w.r.t. an explicit virtual matrix, then scatter by hand
    v = layer.weight.detach().clone().requires_grad_(True)
    F.cross_entropy(F.linear(x, v, layer.bias.detach()), y).backward()
    expected = torch.zeros(layer.n_buckets)
    for i in range(5):
        for j in range(8):
            expected[layer.index[i, j]] += layer.sign[i, j] * v.grad[i, j]
    assert torch.allclose(layer.hashed_weight.grad, expected, atol=1e-6)


def test_compression_below_one_is_refused():
    with pytest.raises(ConfigError, match="compression must be >= 1, got 0.5"):
        HashedLinear(4, 4, compression=0.5)


def test_mlp_spec_builds_hashed_layers_and_trains(digits):
    torch.manual_seed(0)
    model = build_model("mlp:64-64h8-10", digits.input_shape, digits.num_classes)
    assert isinstance(model.fc1, HashedLinear) and model.fc1.compression_factor == 8.0
    before = evaluate(model, digits)["accuracy"]
    fit(model, digits, TrainConfig(epochs=8, lr=0.05), progress=False)
    after = evaluate(model, digits)["accuracy"]
    assert after > 0.85 > before


def test_hashed_model_saves_loads_and_deepcopies(tmp_path, digits):
    torch.manual_seed(0)
    model = build_model("mlp:64-32h4-16h2-10,hash_seed=3", digits.input_shape, 10)
    x = digits.test.x[:20]
    expected = model(x)
    run = load_run(save(model, tmp_path / "run"))
    assert torch.equal(run.model(x), expected)
    assert torch.equal(run.model.fc1.index, model.fc1.index)
    assert torch.equal(copy.deepcopy(model)(x), expected)
