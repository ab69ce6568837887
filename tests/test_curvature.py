"""Curvature statistics against autograd oracles on tiny float64 models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from brainsurgeon.curvature import (
    BlockLayout,
    DamageStats,
    ExactDiagonal,
    GGNDiagonal,
    GradientStats,
    HutchinsonDiagonal,
    InverseFisher,
    LayerInputStats,
    Welford,
    WoodburyInverse,
    collect,
    layer_targets,
)
from brainsurgeon.data.core import Dataset
from brainsurgeon.errors import DataError, NumericalError, UnsupportedLayerError
from brainsurgeon.pruning.masks import set_mask

D = torch.float64


def _mlp(act=nn.Tanh, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), act(), nn.Linear(4, 4), act(), nn.Linear(4, 3)).to(D)


def _conv(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(16, 5),
    ).to(D)


def _data(shape=(5,), classes=3, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=D), torch.randint(
        0, classes, (n,), generator=g
    )


def _conv_data(n=12):
    return _data((1, 8, 8), 5, n)


def _flat(model, targets):
    params = {n: getattr(m, t).detach() for n, (m, t) in targets.items()}
    return params, torch.cat([p.reshape(-1) for p in params.values()])


def _unflat(params, v):
    out, s = {}, 0
    for n, p in params.items():
        out[n] = v[s : s + p.numel()].view_as(p)
        s += p.numel()
    return out


def _full_hessian(model, targets, x, y, loss_fn=F.cross_entropy):
    params, flat = _flat(model, targets)
    model.eval()
    return torch.autograd.functional.hessian(
        lambda v: loss_fn(functional_call(model, _unflat(params, v), (x,)), y), flat
    )


def _cat(result, targets):
    return torch.cat([result[n].reshape(-1) for n in targets])


def _fit(acc, x, y, splits=(7,)):
    """Feed ``acc`` in uneven batches (checks the size weighting)."""
    edges = [0, *splits, x.shape[0]]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        acc.update(x[a:b], y[a:b])
    return acc


def _ggn_oracle(model, targets, x, y):
    """diag(mean_n J_n^T H_out,n J_n) from full Jacobians and per-sample output Hessians."""
    params, flat = _flat(model, targets)
    model.eval()
    J = torch.autograd.functional.jacobian(
        lambda v: functional_call(model, _unflat(params, v), (x,)), flat
    )  # (n, C, P)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    H_out = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    return torch.einsum("ncp,ncd,ndp->p", J, H_out, J) / x.shape[0]


def _residual_oracle(model, targets, x, y):
    """diag of sum_n sum_c dL_n/dz_nc * d2 z_nc / dw2 / N: the part the GGN drops."""
    params, flat = _flat(model, targets)
    with torch.no_grad():
        r = torch.softmax(model(x), 1) - F.one_hot(y, 3)
    H = torch.autograd.functional.hessian(
        lambda v: (functional_call(model, _unflat(params, v), (x,)) * r).sum() / x.shape[0], flat
    )
    return H.diagonal()


# ------------------------------------------------------------------ diagonals


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU], ids=["tanh", "relu"])
def test_exact_diagonal_equals_autograd_hessian(act):
    model = _mlp(act)
    targets = layer_targets(model, biases=True)
    x, y = _data()
    exact = _fit(ExactDiagonal(model, targets, F.cross_entropy, chunk=16), x, y)
    oracle = _full_hessian(model, targets, x, y).diagonal()
    assert torch.allclose(_cat(exact.result(), targets), oracle, atol=1e-5, rtol=0)
    assert float(oracle.abs().max()) > 1e-2  # the comparison is not vacuous


def test_ggn_equals_exact_for_relu_and_cross_entropy():
    model = _mlp(nn.ReLU)
    targets = layer_targets(model, biases=True)
    x, y = _data()
    ggn = _fit(GGNDiagonal(model, targets, F.cross_entropy), x, y)
    oracle = _full_hessian(model, targets, x, y).diagonal()
    assert torch.allclose(_cat(ggn.result(), targets), oracle, atol=1e-10)
    # conv + max-pool + flatten + dropout (eval): against the exact diagonal checked above
    model = _conv().eval()
    targets = layer_targets(model, biases=True)
    x, y = _conv_data()
    ggn = _fit(GGNDiagonal(model, targets, F.cross_entropy), x, y).result()
    exact = _fit(ExactDiagonal(model, targets, F.cross_entropy), x, y).result()
    for name in targets:
        assert torch.allclose(ggn[name], exact[name], atol=1e-10), name


def test_ggn_for_tanh_is_exact_minus_the_residual_term():
    model = _mlp(nn.Tanh)
    targets = layer_targets(model, biases=True)
    x, y = _data()
    ggn = _cat(_fit(GGNDiagonal(model, targets, F.cross_entropy), x, y).result(), targets)
    exact = _full_hessian(model, targets, x, y).diagonal()
    assert (ggn - exact).abs().max() > 1e-3  # tanh curvature is not in the GGN
    assert torch.allclose(ggn, _ggn_oracle(model, targets, x, y), atol=1e-10)
    assert torch.allclose(ggn + _residual_oracle(model, targets, x, y), exact, atol=1e-10)
    assert (ggn >= 0).all()  # a sum of squares


def test_ggn_rules_and_autograd_agree_on_a_conv_net_with_any_loss():
    model = _conv().eval()
    targets = layer_targets(model, biases=True)
    x, y = _conv_data()

    def mse(z, t):
        return F.mse_loss(z, F.one_hot(t, 5).to(z.dtype))

    for loss in (F.cross_entropy, mse):
        rules = _fit(GGNDiagonal(model, targets, loss), x, y).result()
        auto = _fit(GGNDiagonal(model, targets, loss, method="autograd"), x, y, ()).result()
        for name in targets:
            assert torch.allclose(rules[name], auto[name], atol=1e-12), name
    # MSE over N*C entries: per-sample output Hessian 2/C I, GGN = 2/(N C) sum J_n^T J_n
    params, flat = _flat(model, targets)
    J = torch.autograd.functional.jacobian(
        lambda v: functional_call(model, _unflat(params, v), (x,)), flat
    )
    expect = 2 * J.pow(2).sum((0, 1)) / (x.shape[0] * 5)
    assert torch.allclose(_cat(rules, targets), expect, atol=1e-12)


def test_fisher_and_gradient_means_against_a_per_sample_loop():
    model = _conv().eval()
    targets = layer_targets(model, biases=True)
    x, y = _conv_data()
    stats = _fit(GradientStats(model, targets, F.cross_entropy), x, y, splits=(5,))
    params = {n: getattr(m, t).detach().requires_grad_() for n, (m, t) in targets.items()}
    per = []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(functional_call(model, params, (x[i : i + 1],)), y[i : i + 1])
        per.append(
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])
        )
    G = torch.stack(per)
    assert torch.allclose(_cat(stats.result(), targets), G.pow(2).mean(0), atol=1e-12)
    assert torch.allclose(_cat(stats.mean(), targets), G.mean(0), atol=1e-12)
    assert torch.allclose(_cat(stats.abs_mean(), targets), G.abs().mean(0), atol=1e-12)


def test_hutchinson_converges_to_the_exact_diagonal():
    model = _mlp(nn.Tanh)
    targets = layer_targets(model, biases=True)
    x, y = _data()
    exact = _full_hessian(model, targets, x, y).diagonal()
    errors = {}
    for probes in (10, 4000):
        est = _fit(
            HutchinsonDiagonal(model, targets, F.cross_entropy, probes=probes, seed=1),
            x,
            y,
            splits=(),
        )
        errors[probes] = float((_cat(est.result(), targets) - exact).abs().mean())
    assert errors[4000] < errors[10] / 5
    assert errors[4000] < 0.05 * float(exact.abs().mean())
    again = _fit(
        HutchinsonDiagonal(model, targets, F.cross_entropy, probes=10, seed=1), x, y, splits=()
    )
    first = _fit(
        HutchinsonDiagonal(model, targets, F.cross_entropy, probes=10, seed=1), x, y, splits=()
    )
    assert torch.equal(_cat(again.result(), targets), _cat(first.result(), targets))


# ------------------------------------------------------------------ per-sample damage


def _per_sample_damage(model, targets, x, y):
    """Two-pass oracle: every d_n = -g_n w + 0.5 h_n w^2 formed explicitly (g_n by a plain
    autograd loop, h_n by the one-sample GGN diagonal, checked against the exact one above)."""
    params = {n: getattr(m, t).detach().requires_grad_() for n, (m, t) in targets.items()}
    w = torch.cat([p.detach().reshape(-1) for p in params.values()])
    rows = []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(functional_call(model, params, (x[i : i + 1],)), y[i : i + 1])
        gn = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])
        h = GGNDiagonal(model, targets, F.cross_entropy)
        h.update(x[i : i + 1], y[i : i + 1])
        rows.append(-gn * w + 0.5 * _cat(h.result(), targets) * w * w)
    return torch.stack(rows)


@pytest.mark.parametrize("builder", ["mlp", "conv"])
def test_damage_statistics_equal_a_two_pass_computation(builder):
    model = (_mlp(nn.Tanh) if builder == "mlp" else _conv()).eval()
    x, y = _data() if builder == "mlp" else _conv_data()
    targets = layer_targets(model, biases=True)
    d = _per_sample_damage(model, targets, x, y)
    for chunk in (1, 5, 64):
        stats = _fit(DamageStats(model, targets, F.cross_entropy, chunk_size=chunk), x, y)
        assert stats.stats_[next(iter(targets))].count == x.shape[0]
        assert torch.allclose(_cat(stats.mean(), targets), d.mean(0), atol=1e-12)
        sd = torch.from_numpy(np.std(d.numpy(), axis=0))
        assert torch.allclose(_cat(stats.sd(), targets), sd, atol=1e-9)


def test_mean_damage_is_the_full_batch_second_order_estimate():
    model = _mlp(nn.ReLU)
    targets = layer_targets(model)
    x, y = _data()
    stats = _fit(DamageStats(model, targets, F.cross_entropy, chunk_size=4), x, y)
    grads = _fit(GradientStats(model, targets, F.cross_entropy), x, y).mean()
    hess = _fit(ExactDiagonal(model, targets, F.cross_entropy), x, y).result()
    for name, (m, t) in targets.items():
        w = getattr(m, t).detach()
        assert torch.allclose(
            stats.mean()[name], -grads[name] * w + 0.5 * hess[name] * w**2, atol=1e-12
        )


def test_first_order_identity_second_moment_is_w2_times_fisher():
    """E[(w g_n)^2] = w^2 F_qq = Var + mean^2."""
    model = _conv().eval()
    targets = layer_targets(model)
    x, y = _conv_data()
    stats = _fit(DamageStats(model, targets, F.cross_entropy, curvature=False), x, y)
    fisher = _fit(GradientStats(model, targets, F.cross_entropy), x, y).result()
    for name, (m, t) in targets.items():
        w = getattr(m, t).detach()
        assert torch.allclose(
            stats.second_moment()[name], w**2 * fisher[name], rtol=1e-9, atol=1e-15
        )


def test_welford_equals_two_pass_on_a_shifted_stream():
    g = torch.Generator().manual_seed(0)
    values = 1e4 + torch.randn(1000, 3, generator=g, dtype=D)  # large mean: naive sums lose it
    w = Welford()
    for chunk in values.split(37):
        w.update(chunk)
    assert w.count == 1000
    assert torch.allclose(w.mean, values.mean(0), rtol=1e-14)
    assert torch.allclose(w.variance(), values.var(0, unbiased=False), rtol=1e-9)
    assert torch.allclose(w.variance(ddof=1), torch.from_numpy(np.var(values.numpy(), 0, ddof=1)))


# ------------------------------------------------------------------ inverse Fisher


def _per_sample_grads(model, targets, x, y):
    acc = GradientStats(model, targets, F.cross_entropy, method="autograd")
    out = []
    for i in range(x.shape[0]):
        acc.reset()
        acc.update(x[i : i + 1], y[i : i + 1])
        out.append(_cat(acc.mean(), targets))
    return torch.stack(out)


def test_woodbury_inverse_equals_the_inverse_fisher():
    model = _mlp(nn.Tanh)
    targets = layer_targets(model, biases=True)
    x, y = _data()
    n, damp = x.shape[0], 1e-3
    G = _per_sample_grads(model, targets, x, y)
    P = G.shape[1]
    fisher = G.T @ G / n
    acc = _fit(InverseFisher(model, targets, F.cross_entropy, n, damp, chunk_size=5), x, y)
    expect = torch.linalg.inv(damp * torch.eye(P, dtype=D) + fisher)
    assert torch.allclose(acc.result().hinv_[0], expect, rtol=1e-7, atol=1e-7)
    # WoodFisher blocks: each diagonal block is the inverse of that block of the Fisher
    blocked = _fit(InverseFisher(model, targets, F.cross_entropy, n, damp, block_size=8), x, y)
    layout = blocked.layout
    for b in range(layout.blocks):
        idx = layout.index[b][layout.index[b] >= 0]
        ref = torch.linalg.inv(damp * torch.eye(len(idx), dtype=D) + fisher[idx][:, idx])
        got = blocked.result().hinv_[b][: len(idx), : len(idx)]
        assert torch.allclose(got, ref, rtol=1e-7, atol=1e-6)


def test_one_block_woodfisher_equals_exact_and_both_strategies_agree():
    shapes = {"w": torch.Size([4, 6])}
    G = torch.randn(30, 24, generator=torch.Generator().manual_seed(0), dtype=D)
    fits = []
    for block, strategy in ((None, "woodbury"), (24, "woodbury"), (24, "direct"), (None, "auto")):
        inv = WoodburyInverse(BlockLayout(shapes, block), 30, 1e-4, strategy=strategy)
        inv.update(G[:13], chunk=7)
        inv.update(G[13:])
        fits.append(inv)
    expect = torch.linalg.inv(1e-4 * torch.eye(24, dtype=D) + G.T @ G / 30)
    for inv in fits:
        assert torch.allclose(inv.hinv_[0], expect, rtol=1e-7, atol=1e-4), inv.strategy
    keep = {"w": torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5}
    w = {"w": torch.randn(4, 6, dtype=D)}
    new = [inv.remove(w, keep)["w"] for inv in fits]
    for other in new[1:]:
        assert torch.allclose(new[0], other, atol=1e-8)
    assert torch.all(new[0][~keep["w"]] == 0)


# ------------------------------------------------------------------ layer inputs


def test_layer_input_hessian_linear_and_conv():
    lin = nn.Linear(6, 3).to(D)
    x = torch.randn(10, 6, dtype=D)
    stats = LayerInputStats(lin, "lin", dtype=D)
    stats.update(x[:4])
    stats.update(x[4:])
    assert torch.allclose(stats.hessian(), 2 * x.T @ x / 10)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2).to(D)
    xc = torch.randn(5, 2, 7, 7, dtype=D)
    cstats = LayerInputStats(conv, "conv", dtype=D).attach()
    conv(xc)
    cstats.detach()
    conv(xc)  # detached: not counted
    H = cstats.hessian()
    dW = torch.randn_like(conv.weight)
    out = F.conv2d(xc, dW, stride=2, padding=1)  # = dW X
    rows = cstats.count_
    assert rows == 5 * out.shape[2] * out.shape[3]
    flat = dW.reshape(3, -1)
    assert float(out.pow(2).sum() / rows) == pytest.approx(
        float(0.5 * torch.trace(flat @ H @ flat.T)), rel=1e-10
    )


def test_layer_input_errors():
    with pytest.raises(UnsupportedLayerError, match="LayerNorm layer; layer-wise OBS / GPTQ"):
        LayerInputStats(nn.LayerNorm(4), "ln")
    with pytest.raises(DataError, match="saw no inputs"):
        LayerInputStats(nn.Linear(2, 2)).hessian()


# ------------------------------------------------------------------ parametrizations, errors


def test_statistics_use_the_masked_weights():
    model = _mlp(nn.ReLU)
    keep = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) > 0.5
    plain = copy.deepcopy(model)
    with torch.no_grad():
        plain[0].weight.mul_(keep)
    set_mask(model[0], "weight", keep)
    x, y = _data()
    for method in ("rules", "autograd"):
        a = GGNDiagonal(model, layer_targets(model), F.cross_entropy, method)
        b = GGNDiagonal(plain, layer_targets(plain), F.cross_entropy, method)
        a.update(x, y)
        b.update(x, y)
        for name in a.result():
            assert torch.allclose(a.result()[name], b.result()[name], atol=1e-12)


def test_frozen_parameters_and_no_gradient_leak():
    model = _mlp(nn.ReLU)
    for p in model[0].parameters():
        p.requires_grad_(False)
    x, y = _data()
    with torch.no_grad():  # the caller's grad mode does not matter
        ggn = collect(
            GGNDiagonal(model, layer_targets(model), F.cross_entropy),
            model,
            Dataset(x, y),
            batch_size=10,
        )
    oracle = _full_hessian(model, layer_targets(model), x, y).diagonal()
    assert torch.allclose(_cat(ggn.result(), layer_targets(model)), oracle, atol=1e-10)
    assert all(p.grad is None for p in model.parameters())


def test_layers_without_rules_and_shared_layers_take_the_functional_path():
    """A LayerNorm weight (no layer rule) and a layer that runs twice (shared weights) are
    not refused: the rules backend sends them through torch.func, matching the oracle."""
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3)).to(D)
    targets = {"1.weight": (model[1], "weight"), "2.weight": (model[2], "weight")}
    x, y = _data()
    rules = _fit(GGNDiagonal(model, targets, F.cross_entropy), x, y, ()).result()
    auto = _fit(GGNDiagonal(model, targets, F.cross_entropy, method="autograd"), x, y, ())
    for name in targets:
        assert torch.allclose(rules[name], auto.result()[name], atol=1e-12)
    assert rules["1.weight"].shape == (4,)

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    shared = Shared().to(D)
    xs, ys = _data((3,))
    ggn = _fit(GGNDiagonal(shared, layer_targets(shared), F.cross_entropy), xs, ys, ())
    oracle = _fit(
        GGNDiagonal(shared, layer_targets(shared), F.cross_entropy, method="autograd"), xs, ys, ()
    )
    assert torch.allclose(ggn.result()["fc.weight"], oracle.result()["fc.weight"], atol=1e-12)


def test_nan_loss_is_a_numerical_error():
    model = _mlp(nn.ReLU)
    x, y = _data()
    x[3, 0] = float("nan")
    for acc in (
        GGNDiagonal(model, layer_targets(model), F.cross_entropy),
        ExactDiagonal(model, layer_targets(model), F.cross_entropy),
        DamageStats(model, layer_targets(model), F.cross_entropy),
    ):
        with pytest.raises(NumericalError, match="the loss is nan while collecting"):
            acc.update(x, y)


def test_ggn_is_the_same_when_factor_columns_are_backpropagated_in_chunks(monkeypatch):
    from brainsurgeon.curvature import backend

    model = _mlp(nn.ReLU)
    targets = layer_targets(model, biases=True)
    x, y = _data()
    whole = _fit(GGNDiagonal(model, targets, F.cross_entropy), x, y).result()
    damage = _fit(DamageStats(model, targets, F.cross_entropy), x, y)
    monkeypatch.setattr(backend, "GGN_CHUNK", 2)
    chunked = _fit(GGNDiagonal(model, targets, F.cross_entropy), x, y).result()
    damage2 = _fit(DamageStats(model, targets, F.cross_entropy), x, y)
    for name in targets:
        assert torch.allclose(chunked[name], whole[name], atol=1e-12), name
        assert torch.allclose(damage2.sd()[name], damage.sd()[name], atol=1e-12), name
