"""factorize on attention models: out_proj (used functionally) is refused cleanly; loss/device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainsurgeon.data import DataBundle, Dataset
from brainsurgeon.errors import ConfigError
from brainsurgeon.factorization import FactorizeConfig, LowRankLinear, factorize
from brainsurgeon.training import evaluate

OUT_PROJ = "enc.layers.0.self_attn.out_proj"


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x).mean(1))


def test_functionally_used_layers_are_left_dense_with_the_reason_and_the_model_runs():
    model = Encoder()
    result = factorize(model, FactorizeConfig(rank=2))
    plans = {p.name: p for p in result.layers}
    assert plans[OUT_PROJ].rank == 0
    assert "MultiheadAttention reads out_proj.weight directly" in plans[OUT_PROJ].reason
    ff = plans["enc.layers.0.linear1"]  # read by the encoder layer's fused inference path
    assert ff.rank == 0 and "TransformerEncoderLayer reads linear1.weight" in ff.reason
    assert isinstance(model.enc.layers[0].self_attn.out_proj, nn.Linear)
    assert result.factorized == ["head.0"] and isinstance(model.head[0], LowRankLinear)
    x = torch.randn(2, 5, 16)
    assert model(x).shape == (2, 1)  # no "'LowRankLinear' object has no attribute 'weight'"
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 1)  # the fused path in eval mode too


def test_naming_out_proj_is_refused_before_anything_changes():
    model = Encoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=f"cannot factorize {OUT_PROJ}: its parent Multihead"):
        factorize(model, FactorizeConfig(rank=2, layers=(OUT_PROJ, "enc.layers.0.linear1")))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="layers that can be factorized: head.0, head.2$"):
        factorize(model, FactorizeConfig(rank=2, layers=("enc.nope",)))


def test_budget_on_a_regression_model_uses_the_loss_and_device():
    g = torch.Generator().manual_seed(0)
    split = Dataset(torch.randn(64, 5, 16, generator=g), torch.randn(64, generator=g))
    data = DataBundle("toy", split, split, split, num_classes=1, normalization={})
    model = Encoder()
    base = evaluate(model, data, loss="mse")
    result = factorize(model, FactorizeConfig(budget=0.5), data, loss="mse", device="cpu")
    assert result.factorized and "accuracy" not in base
    chosen = [p for p in result.layers if p.name.startswith("head")]
    assert sum(p.rank * (p.m + p.n + 1) if p.rank else p.m * p.n for p in chosen) <= 0.5 * sum(
        p.m * p.n for p in chosen
    )
