"""Second-order criteria (taylor1, obd, obd-sd, obs, layerwise-obs): contract and oracles."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainsurgeon.curvature import GradientStats, collect, layer_targets
from brainsurgeon.curvature.inverse import fit_bytes
from brainsurgeon.data.core import Dataset
from brainsurgeon.errors import ConfigError, NumericalError, UnsupportedLayerError
from brainsurgeon.models import build_model
from brainsurgeon.pruning.criteria import SaliencyContext, make_criterion
from brainsurgeon.pruning.masks import set_mask
from brainsurgeon.solvers import obs_remove_set

VARIANTS = [
    ("taylor1", {}),
    ("taylor1", {"mode": "signed"}),
    ("taylor1", {"mode": "per-sample-abs"}),
    ("obd", {}),
    ("obd", {"hessian": "fisher"}),
    ("obd", {"hessian": "hutchinson", "probes": 4}),
    ("obd-sd", {}),
    ("obd-sd", {"statistic": "ucb", "k": 2.0}),
    ("obd-sd", {"statistic": "cv"}),
    ("obs", {"block_size": 64}),
    ("layerwise-obs", {}),
]
IDS = [f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o in VARIANTS]


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _ctx(model, data, seed=0, masks=None, targets=None):
    return SaliencyContext(
        model=model,
        targets=targets or layer_targets(model),
        data=data,
        seed=seed,
        masks=masks or {},
        batch_size=64,
    )


@pytest.fixture(scope="module")
def small(digits):
    return digits.train.subset(96, seed=0)


class LeNet5Style(nn.Module):
    """LeNet-5's layout (conv-pool-conv-pool-fc-fc, ReLU) at a size the contract runs fast."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.pool1 = nn.Conv2d(1, 4, 5, padding=2), nn.MaxPool2d(2)
        self.conv2, self.pool2 = nn.Conv2d(4, 8, 5, padding=2), nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool2(torch.relu(self.conv2(self.pool1(torch.relu(self.conv1(x))))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_contract_on_a_lenet5_style_conv_net(name, options, small):
    model = LeNet5Style()
    model.train()
    before = copy.deepcopy(model.state_dict())
    scores = make_criterion(name, **options).scores(_ctx(model, small, seed=3))
    again = make_criterion(name, **options).scores(_ctx(model, small, seed=3))
    assert set(scores) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    for key, s in scores.items():
        assert s.shape == dict(model.named_parameters())[key].shape, key
        assert torch.isfinite(s).all() and not s.requires_grad, key
        assert torch.equal(s, again[key]), f"{name} is not deterministic under a seed"
    assert all(p.grad is None for p in model.parameters())  # no gradient leak
    assert model.training  # mode restored
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(("name", "options"), [("obd-sd", {}), ("obs", {"block_size": 128})])
def test_the_real_lenet5_on_digits(name, options, digits):
    torch.manual_seed(0)
    model = build_model("lenet5", digits.input_shape, digits.num_classes)  # 130k weights
    scores = make_criterion(name, **options).scores(_ctx(model, digits.train.subset(64)))
    assert scores["conv2.weight"].shape == (50, 20, 5, 5)
    assert all(torch.isfinite(s).all() for s in scores.values())


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_pruned_entries_score_zero(name, options, small):
    model = _mlp()
    keep = torch.rand(16, 64, generator=torch.Generator().manual_seed(0)) > 0.5
    set_mask(model[1], "weight", keep)
    scores = make_criterion(name, **options).scores(_ctx(model, small, masks={"1.weight": keep}))
    assert torch.all(scores["1.weight"][~keep] == 0)
    assert scores["1.weight"][keep].abs().sum() > 0


def test_hutchinson_depends_on_the_seed(small):
    model = _mlp()
    crit = make_criterion("obd", hessian="hutchinson", probes=2)
    a, b = crit.scores(_ctx(model, small, seed=0)), crit.scores(_ctx(model, small, seed=1))
    assert not torch.equal(a["1.weight"], b["1.weight"])


# ------------------------------------------------------------------ values


def test_obd_ggn_equals_obd_exact_for_relu_and_cross_entropy(small):
    model = _mlp().double()
    data = Dataset(small.x.double(), small.y)
    ggn = make_criterion("obd").scores(_ctx(model, data))
    exact = make_criterion("obd", hessian="exact").scores(_ctx(model, data))
    for key in ggn:
        assert torch.allclose(ggn[key], exact[key], atol=1e-12, rtol=1e-9), key
    fisher = make_criterion("obd", hessian="fisher").scores(_ctx(model, data))
    stats = collect(GradientStats(model, layer_targets(model), F.cross_entropy), model, data)
    w = model[1].weight.detach()
    assert torch.allclose(fisher["1.weight"], 0.5 * stats.result()["1.weight"] * w**2)


def test_taylor_modes_are_consistent(small):
    model = _mlp()
    ctx = _ctx(model, small)
    s_abs = make_criterion("taylor1").scores(ctx)
    s_signed = make_criterion("taylor1", mode="signed").scores(ctx)
    s_ps = make_criterion("taylor1", mode="per-sample-abs").scores(ctx)
    for key in s_abs:
        assert torch.allclose(s_abs[key], s_signed[key].abs())
        assert torch.all(s_ps[key] >= s_abs[key] - 1e-7)  # mean |w g_n| >= |w mean g_n|
    # signed = -w g: the first-order loss change (loss scale) against a gradient by hand
    model.eval()
    loss = F.cross_entropy(model(small.x), small.y)
    (g,) = torch.autograd.grad(loss, model[3].weight)
    assert torch.allclose(s_signed["3.weight"], -model[3].weight.detach() * g, atol=1e-7)


def test_obd_sd_statistics_relate_as_documented(small):
    model = _mlp().double()
    data = Dataset(small.x.double(), small.y)
    ctx = _ctx(model, data)
    mean = make_criterion("obd-sd", statistic="mean").scores(ctx)
    sd = make_criterion("obd-sd").scores(ctx)
    ucb = make_criterion("obd-sd", statistic="ucb", k=3.0).scores(ctx)
    cv = make_criterion("obd-sd", statistic="cv").scores(ctx)
    signed = make_criterion("taylor1", mode="signed").scores(ctx)
    obd = make_criterion("obd").scores(ctx)  # GGN: the curvature in the per-sample damage
    for key in mean:
        assert torch.allclose(mean[key], signed[key] + obd[key], atol=1e-12)  # mean = OBD + 1st
        assert torch.allclose(ucb[key], mean[key].abs() + 3 * sd[key])
        nz = sd[key] > 0
        assert torch.allclose(cv[key][nz], sd[key][nz] / mean[key][nz].abs())
        assert (sd[key] >= 0).all()


@pytest.mark.parametrize(
    ("options", "lam_of"),
    [
        ({"damp": 1e-2}, lambda F: 1e-2 * F.diagonal().mean()),  # relative
        ({"damp": 0.0, "abs_damp": 1e-3}, lambda F: 1e-3),
        ({"damp": 1e-2, "abs_damp": 1e-3}, lambda F: 1e-2 * F.diagonal().mean() + 1e-3),
        ({}, lambda F: 0.1 * F.diagonal().mean()),  # the default
    ],
)
def test_obs_matches_the_inverse_fisher_by_brute_force(small, options, lam_of):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 10)).double()
    data = Dataset(small.x.double()[:40], small.y[:40])
    targets = {"3.weight": (model[3], "weight")}
    ctx = _ctx(model, data, targets=targets)
    crit = make_criterion("obs", hessian="fisher", **options)
    stats = crit.statistics(ctx)  # collected once, passed to score and compensate
    scores = crit.scores(ctx, stats)
    grads = []  # per-sample gradients of the per-sample loss, by a plain loop
    for i in range(40):
        loss = F.cross_entropy(model(data.x[i : i + 1]), data.y[i : i + 1])
        grads.append(torch.autograd.grad(loss, model[3].weight)[0].reshape(-1))
    G = torch.stack(grads)
    fisher = G.T @ G / 40
    lam = lam_of(fisher)
    Hinv = torch.linalg.inv(lam * torch.eye(40, dtype=torch.float64) + fisher)
    assert stats.lam_ == pytest.approx(float(lam), rel=1e-10)
    assert crit.chosen_block_size_ is None  # 40 weights: the exact inverse fits
    w = model[3].weight.detach().reshape(-1)
    assert torch.allclose(scores["3.weight"].reshape(-1), w**2 / (2 * Hinv.diagonal()), rtol=1e-6)
    keep = scores["3.weight"] > scores["3.weight"].median()
    new = crit.compensate(ctx, {"3.weight": keep}, stats=stats)["3.weight"]
    assert torch.allclose(new.reshape(-1), obs_remove_set(w, Hinv, ~keep.reshape(-1)), atol=1e-6)
    assert torch.all(new[~keep] == 0)
    model[3].weight.grad = None
    # one WoodFisher block covering the tensor is the exact inverse
    one = make_criterion("obs", hessian="fisher", block_size=40, **options)
    assert torch.allclose(
        one.scores(_ctx(model, data, targets=targets))["3.weight"], scores["3.weight"], rtol=1e-8
    )


def test_obs_picks_the_largest_block_that_fits_max_memory(small):
    model = _mlp()  # 1,024 + 160 weights
    ctx = _ctx(model, small)
    shapes = {n: ctx.tensor(n).shape for n in ctx.targets}
    exact = fit_bytes(shapes, None)
    crit = make_criterion("obs", max_memory=exact)
    crit.scores(ctx)
    assert crit.chosen_block_size_ is None
    budget = fit_bytes(shapes, 100)
    crit = make_criterion("obs", max_memory=budget)
    s_auto = crit.scores(ctx)
    block = crit.chosen_block_size_
    assert block is not None and block >= 100
    assert fit_bytes(shapes, block) <= budget < fit_bytes(shapes, block + 1)
    assert crit.statistics(ctx).layout.block == block
    fixed = make_criterion("obs", block_size=block).scores(ctx)  # explicit sizes still work
    for name in s_auto:
        assert torch.equal(s_auto[name], fixed[name])


def _layer_error(w_old, w_new, x):
    return float(((w_old - w_new) @ x.T).pow(2).sum())


def test_layerwise_obs_prune_hits_sparsity_and_beats_magnitude(small):
    model = _mlp()
    ctx = _ctx(model, small)
    before = copy.deepcopy(model.state_dict())
    crit = make_criterion("layerwise-obs", sequential=False)
    keep, new = crit.solve(ctx, 0.75, None)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    x1 = small.x.flatten(1)
    for key, rows in (("1.weight", 16 * 64), ("3.weight", 16 * 10)):
        assert int((~keep[key]).sum()) == round(0.75 * rows)
        assert torch.all(new[key][~keep[key]] == 0)
    w = model[1].weight.detach()
    k = round(0.75 * w.numel())
    mag = w * (w.abs() > w.abs().flatten().sort().values[k - 1])
    assert _layer_error(w, new["1.weight"], x1) < 0.8 * _layer_error(w, mag, x1)
    # N:M, per-layer dict, sequential calibration and the OBC / SparseGPT switch all run
    keep_nm, _ = make_criterion("layerwise-obs").solve(ctx, 0.5, (2, 4))
    assert torch.all(keep_nm["1.weight"].view(16, -1, 4).sum(-1) == 2)
    keep_d, _ = make_criterion("layerwise-obs", method="sparsegpt").solve(ctx, {"3.weight": 0.5})
    assert keep_d["1.weight"].all() and int((~keep_d["3.weight"]).sum()) == 80


def test_layerwise_obs_compensate_reconstructs_given_masks(small):
    model = _mlp()
    ctx = _ctx(model, small)
    crit = make_criterion("layerwise-obs")
    scores = crit.scores(ctx)
    keep = {k: s > s.median() for k, s in scores.items()}
    new = crit.compensate(ctx, keep)
    x1 = small.x.flatten(1)
    w = model[1].weight.detach()
    assert torch.all(new["1.weight"][~keep["1.weight"]] == 0)
    assert _layer_error(w, new["1.weight"], x1) < _layer_error(w, w * keep["1.weight"], x1)


# ------------------------------------------------------------------ errors


def test_obs_refuses_an_exact_inverse_that_is_too_large(small):
    model = _mlp()  # 1,184 weights: an 11 MB exact inverse
    with pytest.raises(
        ConfigError,
        match=r"exact inverse .* more than max_memory=1,000,000 bytes; use block_size='auto'",
    ):
        make_criterion("obs", block_size=None, max_memory=10**6).scores(_ctx(model, small))
    with pytest.raises(ConfigError, match="cannot hold even a diagonal inverse of 1,184 weights"):
        make_criterion("obs", max_memory=1000).scores(_ctx(model, small))
    with pytest.raises(ConfigError, match="obd hessian='exact' needs one Hessian-vector product"):
        make_criterion("obd", hessian="exact", max_weights=100).scores(_ctx(model, small))


def test_obs_bad_options_fail_clearly():
    with pytest.raises(ConfigError, match="obs damping must be >= 0 and not all zero"):
        make_criterion("obs", damp=0.0)
    with pytest.raises(ConfigError, match=r"obs hessian must be one of \['fisher', 'ggn'\]"):
        make_criterion("obs", hessian="exact")
    with pytest.raises(ConfigError, match=r"obs ggn_tol must lie in \[0, 1\)"):
        make_criterion("obs", ggn_tol=1.0)
    with pytest.raises(ConfigError, match="obs block_size must be 'auto', None"):
        make_criterion("obs", block_size="big")


def test_bad_options_fail_clearly():
    with pytest.raises(ConfigError, match=r"obd hessian must be one of \['exact', 'ggn'"):
        make_criterion("obd", hessian="newton")
    with pytest.raises(ConfigError, match="obd-sd statistic must be one of"):
        make_criterion("obd-sd", statistic="median")
    with pytest.raises(ConfigError, match="taylor1 mode must be one of"):
        make_criterion("taylor1", mode="square")
    with pytest.raises(ConfigError, match="unknown method 'fast'; valid: rules, autograd"):
        make_criterion("obd", method="fast")
    with pytest.raises(ConfigError, match="layerwise-obs method must be one of"):
        make_criterion("layerwise-obs", method="exact")


def test_layers_without_rules_are_scored_and_layerwise_refuses_clearly(small):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    targets = {"2.weight": (model[2], "weight"), "3.weight": (model[3], "weight")}
    ctx = _ctx(model, small, targets=targets)
    rules = make_criterion("obd").scores(ctx)  # LayerNorm: the functional path, not a refusal
    exact = make_criterion("obd", hessian="exact").scores(ctx)
    auto = make_criterion("obd-sd", method="autograd").scores(ctx)
    assert exact["2.weight"].shape == auto["2.weight"].shape == rules["2.weight"].shape == (8,)
    with pytest.raises(UnsupportedLayerError, match="LayerNorm layer; layer-wise OBS"):
        make_criterion("layerwise-obs").scores(ctx)
    bias = {"1.bias": (model[1], "bias")}
    with pytest.raises(UnsupportedLayerError, match="1.bias is not a weight"):
        make_criterion("layerwise-obs").solve(_ctx(model, small, targets=bias), 0.5)


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_nan_loss_is_a_numerical_error(name, options, small):
    x = small.x.clone()
    x[5] = float("nan")
    match = "inputs of 1.weight contain NaN" if name == "layerwise-obs" else "the loss is nan"
    with pytest.raises(NumericalError, match=match):
        make_criterion(name, **options).scores(_ctx(_mlp(), Dataset(x, small.y)))


def test_criteria_need_data():
    with pytest.raises(ConfigError, match="criterion 'obd-sd' needs data"):
        make_criterion("obd-sd").scores(_ctx(_mlp(), None))
