"""Unit criteria against brute-force oracles on tiny float64 networks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainsurgeon.errors import ConfigError, UnsupportedLayerError
from brainsurgeon.structured import (
    UNIT_CRITERIA,
    Group,
    Slice,
    make_unit_criterion,
    mlp_groups,
    select_units,
    unit_scores,
)


def tiny_mlp(act: type[nn.Module] = nn.ReLU, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), act(), nn.Linear(6, 4), act(), nn.Linear(4, 3)).double()


def tiny_data(n: int = 40, seed: int = 1, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(
        0, classes, (n,), generator=g
    )


def loss_with_columns_zeroed(model, consumer: str, cols, x, y, loss=F.cross_entropy) -> float:
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.get_submodule(consumer).weight[:, cols] = 0.0
        return float(loss(m(x), y))


def per_sample_taylor(model, x, y, split: int, loss=F.cross_entropy, ggn: bool = False):
    """Brute force: a_n (the input of layer ``split``), g_n = dL_n/da, H_n = d2L_n/da2 by
    autograd (or the Gauss-Newton J^T Lzz J), per sample."""
    head, tail = model[:split], model[split:]
    a = head(x).detach()
    gs, hs = [], []
    for n in range(len(x)):

        def ln(v, n=n):
            return loss(tail(v[None]), y[n : n + 1])

        an = a[n].clone().requires_grad_(True)
        gs.append(torch.autograd.grad(ln(an), an)[0])
        if ggn:
            jac = torch.autograd.functional.jacobian(lambda v: tail(v[None])[0], a[n])
            z = tail(a[n][None])[0].detach()
            lzz = torch.autograd.functional.hessian(lambda v, n=n: loss(v[None], y[n : n + 1]), z)
            hs.append(jac.T @ lzz @ jac)
        else:
            hs.append(torch.autograd.functional.hessian(ln, a[n]))
    return a, torch.stack(gs), torch.stack(hs)


def brute_unit_damage(a, g, h, unit_size: int = 1):
    """d_nu = -g_nu . a_nu + 0.5 a_nu^T H_n[u, u] a_nu over the unit's block."""
    n, d = a.shape
    out = torch.zeros(n, d // unit_size, dtype=a.dtype)
    for u in range(d // unit_size):
        sl = slice(u * unit_size, (u + 1) * unit_size)
        au = a[:, sl]
        quad = torch.einsum("ni,nij,nj->n", au, h[:, sl, sl], au)
        out[:, u] = -(g[:, sl] * au).sum(1) + 0.5 * quad
    return out


# ---- oracles ----------------------------------------------------------------------------


def test_true_damage_equals_zeroing_each_consumer_column():
    model, (x, y) = tiny_mlp(), tiny_data()
    groups = mlp_groups(model)
    scores = unit_scores(model, groups, "true-damage", (x, y), batch_size=16)
    base = float(F.cross_entropy(model(x), y).detach())
    for group in groups:
        consumer = group.consumers[0].module
        want = [
            loss_with_columns_zeroed(model, consumer, [u], x, y) - base for u in range(group.units)
        ]
        torch.testing.assert_close(scores[group.name], torch.tensor(want, dtype=torch.float64))


def test_unit_obd_and_obd_sd_match_autograd_hessian_on_relu_net():
    """ReLU nets are piecewise linear in the activation, so the GGN is the exact Hessian."""
    model, (x, y) = tiny_mlp(), tiny_data()
    group = mlp_groups(model)[0]  # fc "0", read by "2"
    a, g, h = per_sample_taylor(model, x, y, split=2)
    d = brute_unit_damage(a, g, h)
    crit = make_unit_criterion("obd")
    stats = crit.statistics(model, group, crit.calibration((x, y), None, 16))
    torch.testing.assert_close(crit.from_stats(model, group, stats), d.mean(0))
    no_first = make_unit_criterion("obd", first_order=False).from_stats(model, group, stats)
    torch.testing.assert_close(no_first, (0.5 * torch.einsum("ni,nii->ni", a**2, h)).mean(0))
    sd = make_unit_criterion("obd-sd").score(model, group, (x, y), batch_size=16)
    torch.testing.assert_close(sd, d.std(0, correction=0))
    ucb = make_unit_criterion("obd-sd", statistic="ucb", k=2.0).score(model, group, (x, y))
    torch.testing.assert_close(ucb, d.mean(0).abs() + 2.0 * d.std(0, correction=0))


def test_unit_obd_matches_brute_force_ggn_on_tanh_net_with_mse():
    model = tiny_mlp(nn.Tanh)
    x, _ = tiny_data(12)
    y = torch.randn(12, 3, dtype=torch.float64)
    group = mlp_groups(model)[1]  # fc "2", read by "4"
    a, g, h = per_sample_taylor(model, x, y, split=4, loss=F.mse_loss, ggn=True)
    got = make_unit_criterion("obd").score(model, group, (x, y), loss="mse", batch_size=5)
    torch.testing.assert_close(got, brute_unit_damage(a, g, h).mean(0))


def test_multi_index_units_use_the_block_of_the_hessian():
    model, (x, y) = tiny_mlp(), tiny_data()
    group = Group(
        "0", "neuron", 3, (Slice("0", "weight", 0, 2), Slice("0", "bias", 0, 2)),
        (Slice("2", "weight", 1, 2),),
    )  # fmt: skip
    a, g, h = per_sample_taylor(model, x, y, split=2)
    got = make_unit_criterion("obd").score(model, group, (x, y))
    torch.testing.assert_close(got, brute_unit_damage(a, g, h, unit_size=2).mean(0))
    damage = make_unit_criterion("true-damage").score(model, group, (x, y))
    base = float(F.cross_entropy(model(x), y).detach())
    want = [loss_with_columns_zeroed(model, "2", [2 * u, 2 * u + 1], x, y) - base for u in range(3)]
    torch.testing.assert_close(damage, torch.tensor(want, dtype=torch.float64))


def test_taylor_activation_and_apoz_match_hand_computation():
    model, (x, y) = tiny_mlp(), tiny_data()
    group = mlp_groups(model)[0]
    a, g, _ = per_sample_taylor(model, x, y, split=2)
    taylor = make_unit_criterion("taylor").score(model, group, (x, y), batch_size=7)
    torch.testing.assert_close(taylor, (a * g).abs().mean(0))
    act = make_unit_criterion("activation").score(model, group, (x, y), batch_size=7)
    torch.testing.assert_close(act, a.abs().mean(0))
    apoz = make_unit_criterion("apoz").score(model, group, (x, y), batch_size=7)
    torch.testing.assert_close(apoz, 1.0 - (a == 0).double().mean(0))


def test_conv_channels_true_damage_and_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten()).double()
    x = torch.randn(6, 2, 7, 7, dtype=torch.float64)
    y = torch.randn(6, 27, dtype=torch.float64)
    group = Group("0", "channel", 4, (Slice("0", "weight", 0),), (Slice("2", "weight", 1),))
    got = make_unit_criterion("true-damage").score(model, group, (x, y), loss="mse")
    base = float(F.mse_loss(model(x), y).detach())
    want = [loss_with_columns_zeroed(model, "2", [u], x, y, F.mse_loss) - base for u in range(4)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    act = make_unit_criterion("activation").score(model, group, (x, y))
    torch.testing.assert_close(act, model[:2](x).abs().mean((0, 2, 3)))


def test_norms_are_row_norms_and_pooled_sums_entries():
    model = tiny_mlp()
    group = mlp_groups(model)[0]
    w, b = model[0].weight.detach(), model[0].bias.detach()
    torch.testing.assert_close(make_unit_criterion("l2").score(model, group), w.norm(dim=1))
    torch.testing.assert_close(make_unit_criterion("l1").score(model, group), w.abs().sum(1))
    with_bias = make_unit_criterion("l2", include_bias=True).score(model, group)
    torch.testing.assert_close(with_bias, (w.pow(2).sum(1) + b**2).sqrt())
    both = make_unit_criterion("l1", slices="all").score(model, group)
    torch.testing.assert_close(both, w.abs().sum(1) + model[2].weight.detach().abs().sum(0))
    pooled = make_unit_criterion("pooled:magnitude", pool="max").score(model, group)
    torch.testing.assert_close(pooled, torch.cat([w, b[:, None]], 1).abs().max(1).values)


def test_group_obs_compensation_is_the_least_squares_fit():
    model, (x, _) = tiny_mlp(seed=3), tiny_data(60)
    group = mlp_groups(model)[0]
    xin = model[:2](x).detach()  # what fc "2" reads
    target = model[2](xin).detach()
    keep = torch.tensor([True, False, True, True, False, True])
    for bias in (True, False):
        m = copy.deepcopy(model)
        crit = make_unit_criterion("group-obs", damp=1e-12, bias=bias)
        crit.compensate(m, group, keep, (x, x[:, 0]))
        kept = xin[:, keep]
        design = torch.cat([kept, torch.ones(len(x), 1, dtype=x.dtype)], 1) if bias else kept
        rhs = target if bias else target - model[2].bias.detach()
        fit = torch.linalg.lstsq(design, rhs).solution
        torch.testing.assert_close(m[2].weight.detach()[:, keep], fit[: keep.sum()].T)
        assert (m[2].weight.detach()[:, ~keep] == 0).all()
        if bias:
            torch.testing.assert_close(m[2].bias.detach(), fit[-1])


def test_group_obs_score_is_the_refit_error_of_removing_one_unit():
    model, (x, _) = tiny_mlp(seed=3), tiny_data(60)
    group = mlp_groups(model)[0]
    xin = torch.cat([model[:2](x).detach(), torch.ones(60, 1, dtype=torch.float64)], 1)
    target = model[2](xin[:, :-1]).detach()
    got = make_unit_criterion("group-obs", damp=1e-12).score(model, group, (x, x[:, 0]))
    want = []
    for u in range(group.units):
        cols = [c for c in range(7) if c != u]
        fit = torch.linalg.lstsq(xin[:, cols], target).solution
        want.append(float(((xin[:, cols] @ fit - target) ** 2).sum()))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_dropout_regression_tracks_true_damage():
    model, (x, y) = tiny_mlp(), tiny_data()
    group = mlp_groups(model)[0]
    reg = make_unit_criterion("dropout-regression", masks=400, keep=0.9).score(model, group, (x, y))
    true = make_unit_criterion("true-damage").score(model, group, (x, y))
    assert torch.corrcoef(torch.stack([reg, true]))[0, 1] > 0.95


# ---- selection ----------------------------------------------------------------------------


def test_select_units_per_layer_and_global_budgets():
    scores = {"fc1": torch.tensor([5.0, 1.0, 3.0, 2.0]), "fc2": torch.tensor([0.5, 9.0])}
    keep = select_units(scores, 0.5)
    assert keep["fc1"].tolist() == [True, False, True, False]
    assert keep["fc2"].tolist() == [False, True]
    keep = select_units(scores, 0.5, scheme="global")
    assert keep["fc1"].tolist() == [True, False, True, False] and keep["fc2"].tolist() == [
        False,
        True,
    ]
    normalized = select_units(
        {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([100.0, 300.0])},
        0.5,
        scheme="global",
        normalize="max",
    )
    assert normalized["a"].tolist() == [False, True] and normalized["b"].tolist() == [False, True]


def test_select_units_refuses_to_empty_a_group():
    scores = {"fc1": torch.arange(4.0), "fc2": torch.tensor([-1.0, -2.0])}
    with pytest.raises(ConfigError, match="would remove all 4 units of fc1; keep at least one"):
        select_units(scores, 1.0)
    with pytest.raises(ConfigError, match="all 2 units of fc2.*normalize"):
        select_units(scores, 0.34, scheme="global")
    with pytest.raises(ConfigError, match="keep at least 3"):
        select_units(scores, 0.5, min_keep=3)
    with pytest.raises(ConfigError, match="scheme must be one of"):
        select_units(scores, 0.5, scheme="class-blind")
    with pytest.raises(ConfigError, match="fraction of units to remove"):
        select_units(scores, 1.5)


# ---- errors and the registry ----------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in UNIT_CRITERIA if make_unit_criterion(n).needs_data])
def test_data_criteria_without_data_name_themselves(name):
    model = tiny_mlp()
    with pytest.raises(ConfigError, match=f"unit criterion '{name}' needs calibration data"):
        make_unit_criterion(name).score(model, mlp_groups(model)[0])


def test_registry_descriptions_and_option_errors():
    assert {"l1", "l2", "pooled", "taylor", "obd", "obd-sd", "group-obs"} <= set(UNIT_CRITERIA)
    assert all(UNIT_CRITERIA.describe().values())
    with pytest.raises(ConfigError, match="pooled:obd"):
        make_unit_criterion("pooled:obd").score(tiny_mlp(), mlp_groups(tiny_mlp())[0])
    with pytest.raises(ConfigError, match="no option"):
        make_unit_criterion("l2", pool="max")
    with pytest.raises(ConfigError, match="Did you mean 'taylor'"):
        make_unit_criterion("taylr")
    with pytest.raises(ConfigError, match="statistic must be one of"):
        make_unit_criterion("obd-sd", statistic="median")


def test_unsupported_consumer_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.LayerNorm(4), nn.Linear(4, 2)).double()
    group = Group("0", "neuron", 4, (Slice("0", "weight", 0),), (Slice("2", "weight", 0),))
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(UnsupportedLayerError, match="LayerNorm"):
        make_unit_criterion("taylor").score(model, group, (x, torch.zeros(4, dtype=torch.long)))
