"""Group-wise grids (``group_size``): the "block" granularity of uniform and GPTQ quantization,
checked against a per-group brute force and through the compressed file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainsurgeon import quantize, runs
from brainsurgeon.errors import ConfigError
from brainsurgeon.quantization import quant_config
from brainsurgeon.quantization.methods.gptq import GPTQ, GPTQConfig
from brainsurgeon.quantization.methods.uniform import fake_quantize, grid
from brainsurgeon.quantization.registry import LayerPlan


def _rtn_by_group(W: torch.Tensor, gs: int, bits: int) -> torch.Tensor:
    out = torch.empty_like(W)
    for start in range(0, W.shape[1], gs):
        block = W[:, start : start + gs]
        s, z = grid(block.min(1).values, block.max(1).values, bits, False)
        out[:, start : start + gs] = fake_quantize(block, s[:, None], z[:, None], bits, False)
    return out


def test_uniform_groups_equal_quantizing_each_group_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 6))  # 20 columns in groups of 8: 8, 8, 4
    W = model[0].weight.detach().clone()
    quantize(model, quant_config("uniform", bits=3, group_size=8))
    q = model[0].parametrizations.weight[0]
    assert tuple(q.scale.shape) == (6, 3)
    torch.testing.assert_close(model[0].weight, _rtn_by_group(W, 8, 3))
    per_row = nn.Sequential(nn.Linear(20, 6))
    per_row.load_state_dict({"0.weight": W, "0.bias": model[0].bias.detach()})
    quantize(per_row, quant_config("uniform", bits=3))
    err = lambda V: (V - W).pow(2).sum().item()  # noqa: E731
    assert err(model[0].weight) < err(per_row[0].weight)  # finer grids, smaller error


def test_gptq_groups_lie_on_their_grids_and_beat_rounding():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 32, generator=g) @ torch.randn(32, 32, generator=g)
    layer = nn.Linear(32, 12)
    W = layer.weight.detach().clone()
    H = 2 * X.T @ X / X.shape[0]
    from brainsurgeon.solvers import gptq as solve

    GPTQ.solve_layer(LayerPlan("fc", layer, 3), H, GPTQConfig(bits=3, group_size=8), solve)
    q = layer.parametrizations.weight[0]
    Wq = layer.weight.detach()
    assert tuple(q.scale.shape) == (12, 4)
    torch.testing.assert_close(q(Wq), Wq, atol=1e-6, rtol=0)  # on the group grids
    err = lambda V: ((V - W) @ X.T).pow(2).sum().item()  # noqa: E731
    assert err(Wq) < 0.8 * err(_rtn_by_group(W, 8, 3))


def test_groups_survive_save_load_and_the_compressed_file(tmp_path):
    from brainsurgeon.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp:64-32-10", (1, 8, 8), 10)
    quantize(model, quant_config("uniform", bits=4, group_size=16))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(runs.load(runs.save(model, tmp_path / "run"))(x), ref)
        import brainsurgeon

        out = brainsurgeon.export(runs.load(tmp_path / "run"), tmp_path / "m.bsc")
        assert torch.equal(brainsurgeon.load(tmp_path / "m.bsc")(x), ref)
    rows = [r for r in out.rows if r["tensor"] == "fc1.weight"]
    assert rows and rows[0]["values"] == "affine", rows


def test_group_size_needs_per_channel_and_a_sane_value():
    with pytest.raises(ConfigError, match="per-channel"):
        quant_config("uniform", group_size=8, granularity="per-tensor")
    with pytest.raises(ConfigError, match=">= 0"):
        quant_config("gptq", group_size=-1)


def test_act_order_is_gptq_on_the_permuted_problem():
    """Oracle: act_order equals plain GPTQ on columns sorted by decreasing H_jj, unpermuted;
    the quantizer sees original column indices (static group grids stay put)."""
    from brainsurgeon.solvers import gptq

    g = torch.Generator().manual_seed(1)
    X = torch.randn(400, 16, generator=g) * torch.linspace(0.1, 3.0, 16)  # unequal energies
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(6, 16, generator=g)
    keep = torch.rand(6, 16, generator=g) > 0.3
    seen = []

    def quant(col, j):
        seen.append(j)
        step = 0.25 * (1 + j % 4)  # a grid that depends on the original column
        return torch.round(col / step) * step

    got = gptq(W, H, quant, keep=keep, act_order=True, block_size=5)
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
    assert seen == perm.tolist()
    want = gptq(W[:, perm], H[perm][:, perm], lambda c, j: quant(c, int(perm[j])),
                keep=keep[:, perm], block_size=5)[:, torch.argsort(perm)]  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not got[~keep].any()


def test_act_order_through_the_config_lies_on_the_group_grids():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 32, generator=g) @ torch.randn(32, 32, generator=g)
    X[:, 3] *= 20  # an outlier input feature
    layer = nn.Linear(32, 12)
    H = 2 * X.T @ X / X.shape[0]
    from brainsurgeon.solvers import gptq as solve

    config = GPTQConfig(bits=3, group_size=8, act_order=True)
    GPTQ.solve_layer(LayerPlan("fc", layer, 3), H, config, solve)
    Wq = layer.weight.detach()
    torch.testing.assert_close(layer.parametrizations.weight[0](Wq), Wq, atol=1e-6, rtol=0)
