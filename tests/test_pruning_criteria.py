"""Criteria: one contract over every registered criterion, and oracles for the measured ones."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from brainsurgeon.data.core import Dataset
from brainsurgeon.errors import ConfigError, NumericalError
from brainsurgeon.pruning import CRITERIA, SaliencyContext, make_criterion, saliency, set_mask
from brainsurgeon.pruning.criteria.base import CompensatingCriterion, Criterion, Solver
from brainsurgeon.pruning.targets import eligible_targets


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets run fastest on one thread (and do not spin against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Options that keep the expensive criteria fast on tiny nets (others run with defaults).
FAST = {"dropout-regression": {"masks": 300}, "true-damage": {"weights": 60}}


def _tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10))


def _tiny_conv(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(108, 10))


def _data(digits, n=128):
    return digits.train.subset(n, seed=0)


def _ctx(model, data, seed=0, masks=None):
    targets = eligible_targets(model)
    return SaliencyContext(model=model, targets=targets, data=data, seed=seed, masks=masks or {})


def _scores(name, ctx):
    """Every registered criterion and solver scores (the contract has no exceptions)."""
    crit = make_criterion(name, **FAST.get(name, {}))
    assert isinstance(crit, Criterion)
    return crit.scores(ctx)


@pytest.mark.parametrize("builder", [_tiny_mlp, _tiny_conv], ids=["mlp", "conv"])
@pytest.mark.parametrize("name", CRITERIA.names())
def test_criterion_contract(name, builder, digits):
    model = builder()
    model.train()
    data = _data(digits)
    before = copy.deepcopy(model.state_dict())
    ctx = _ctx(model, data, seed=3)
    scores = _scores(name, ctx)
    assert set(scores) == set(ctx.targets)
    for key, s in scores.items():
        assert s.shape == ctx.tensor(key).shape, key
        assert not torch.isnan(s).any(), key
        assert not s.requires_grad, key
    again = _scores(name, _ctx(model, data, seed=3))
    for key in scores:
        assert torch.equal(scores[key], again[key]), f"{name} is not deterministic under a seed"
    # no gradient leak, weights and mode untouched
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.training


@pytest.mark.parametrize("name", CRITERIA.names())
def test_statistics_are_collected_once_and_passed_in(name, digits, monkeypatch):
    """One pruning step collects a criterion's statistics once; score/compensate/solve get
    them from the engine (no hidden caches); a solver returns masks at the sparsity asked
    and new weights without writing to the model."""
    from brainsurgeon.pruning import PruneConfig
    from brainsurgeon.pruning.step import prune_step

    model = _tiny_mlp()
    crit = make_criterion(name, **FAST.get(name, {}))
    calls = []
    real = type(crit).statistics
    monkeypatch.setattr(
        type(crit), "statistics", lambda self, ctx: calls.append(1) or real(self, ctx)
    )
    before = copy.deepcopy(model.state_dict())
    ctx = _ctx(model, _data(digits))
    if isinstance(crit, Solver):
        keep, new = crit.solve(ctx, 0.5)
        assert set(keep) == set(new) == set(ctx.targets)
        for key, k in keep.items():
            assert abs(1 - k.float().mean().item() - 0.5) < 0.02, key
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        return
    config = PruneConfig(criterion=name, criterion_options=FAST.get(name, {}), amount=0.5)
    record = prune_step(
        model,
        crit,
        config,
        ctx.targets,
        amount=0.5,
        layer_amounts=None,
        data=ctx.data,
        seed=0,
        device=torch.device("cpu"),
        progress=False,
    )
    assert len(calls) == 1, f"{name}: statistics collected {len(calls)} times in one step"
    assert abs(record["sparsity"] - 0.5) < 1e-3
    if not isinstance(crit, CompensatingCriterion):  # only compensators move survivors
        for key in ctx.targets:
            kept = model.get_submodule(key.rsplit(".", 1)[0]).weight != 0
            assert torch.equal(ctx.tensor(key)[kept], before[key][kept]), key


@pytest.mark.parametrize("name", CRITERIA.names())
def test_criterion_works_on_a_masked_model(name, digits):
    model = _tiny_mlp()
    set_mask(
        model[1], "weight", torch.rand(12, 64, generator=torch.Generator().manual_seed(0)) > 0.5
    )
    ctx = _ctx(model, _data(digits), masks={"1.weight": model[1].parametrizations.weight[0].mask})
    scores = _scores(name, ctx)
    assert scores["1.weight"].shape == (12, 64)
    assert not torch.isnan(scores["1.weight"]).any()


@pytest.mark.parametrize("name", [n for n in CRITERIA.names() if CRITERIA.get(n).needs_data])
def test_criteria_that_need_data_say_so(name):
    with pytest.raises(ConfigError, match=f"criterion '{name}' needs data"):
        saliency(_tiny_mlp(), name, None)


def test_magnitude_and_random(digits):
    model = _tiny_mlp()
    s = saliency(model, "magnitude")
    assert torch.equal(s["1.weight"], model[1].weight.detach().abs())
    assert torch.allclose(
        saliency(model, "magnitude", power=2)["3.weight"], model[3].weight.detach() ** 2
    )
    r0, r1 = saliency(model, "random", seed=0), saliency(model, "random", seed=1)
    assert not torch.equal(r0["1.weight"], r1["1.weight"])
    assert 0.4 < float(r0["1.weight"].mean()) < 0.6
    with pytest.raises(ConfigError, match="magnitude power must be 1"):
        saliency(model, "magnitude", power=3)
    with pytest.raises(
        ConfigError, match=r"criterion 'magnitude' has no option\(s\) \['hessian'\]"
    ):
        saliency(model, "magnitude", hessian="ggn")


def test_unknown_criterion_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown criterion 'obdd'; valid: .*magnitude"):
        saliency(_tiny_mlp(), "obdd")


def _hand_damage(model, data, layer, q):
    """Zero one weight by hand and measure the float64 loss change."""
    m = copy.deepcopy(model).double().eval()
    x, y = data.x.double(), data.y
    with torch.no_grad():
        base = F.cross_entropy(m(x), y).item()
        m[layer].weight.view(-1)[q] = 0.0
        return F.cross_entropy(m(x), y).item() - base


def test_true_damage_equals_a_hand_loop(digits):
    model = _tiny_mlp()
    data = _data(digits, 200)
    scores = saliency(model, "true-damage", data, samples=200)
    for layer, key in ((1, "1.weight"), (3, "3.weight")):
        for q in range(0, model[layer].weight.numel(), 29):
            want = _hand_damage(model, data, layer, q)
            assert scores[key].view(-1)[q].item() == pytest.approx(want, abs=1e-12, rel=1e-9)


def test_true_damage_sample_marks_unsampled_entries_inf(digits):
    model = _tiny_mlp()
    data = _data(digits, 100)
    scores = saliency(model, "true-damage", data, weights=40)
    flat = torch.cat([s.flatten() for s in scores.values()])
    assert int(torch.isfinite(flat).sum()) == 40
    assert torch.isposinf(flat[~torch.isfinite(flat)]).all()
    full = saliency(model, "true-damage", data)
    mask = torch.isfinite(flat)
    assert torch.allclose(flat[mask], torch.cat([s.flatten() for s in full.values()])[mask])


class _Additive(nn.Module):
    """A 'network' whose loss is exactly additive in its weights: L = sum_q c_q (1 - w_q/w0_q)."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(c.numel(), 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.linspace(0.5, 1.5, c.numel()).view(1, -1))
        self.register_buffer("w0", self.fc.weight.detach().clone())
        self.register_buffer("c", c.view(1, -1).clone())

    def forward(self, x):
        removed = 1 - self.fc.weight / self.w0
        return (removed * self.c).sum().expand(x.shape[0], 1)


def _loss(out, y):
    return out.mean()


@pytest.mark.parametrize("solver,masks,floor", [("lstsq", 400, 0.99), ("marginal", 3000, 0.9)])
def test_dropout_regression_recovers_additive_damage(solver, masks, floor):
    c = torch.rand(100, generator=torch.Generator().manual_seed(0))
    model = _Additive(c)
    data = Dataset(torch.zeros(8, 1), torch.zeros(8, dtype=torch.long))
    ctx = SaliencyContext(
        model=model, targets={"fc.weight": (model.fc, "weight")}, data=data, loss_fn=_loss
    )
    crit = make_criterion("dropout-regression", masks=masks, keep=0.7, solver=solver)
    est = crit.scores(ctx)["fc.weight"].flatten()
    rho = spearmanr(est.numpy(), c.numpy()).statistic
    assert rho > floor
    if solver == "lstsq":
        assert torch.allclose(est, c.double(), atol=1e-3)


def test_dropout_regression_ranks_real_damage(digits):
    model = _tiny_mlp()
    data = _data(digits, 200)
    truth = saliency(model, "true-damage", data, samples=200)
    est = saliency(model, "dropout-regression", data, samples=200, masks=1500, keep=0.95)
    a = torch.cat([s.flatten() for s in est.values()]).numpy()
    b = torch.cat([s.flatten() for s in truth.values()]).numpy()
    assert spearmanr(a, b).statistic > 0.6


def test_dropout_regression_per_neuron_scores_are_constant_per_row(digits):
    model = _tiny_mlp()
    s = saliency(model, "dropout-regression", _data(digits), masks=100, unit="neuron")
    w = s["1.weight"]
    assert torch.equal(w, w[:, :1].expand_as(w))


def test_dropout_regression_rejects_bad_options():
    with pytest.raises(ConfigError, match=r"keep must lie in \(0, 1\)"):
        make_criterion("dropout-regression", keep=1.0)
    with pytest.raises(ConfigError, match="unit must be one of"):
        make_criterion("dropout-regression", unit="filter")


@pytest.mark.parametrize("name", ["true-damage", "dropout-regression"])
def test_nan_loss_is_a_clear_error(name, digits):
    model = _tiny_mlp()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="NaN or infinite|loss on the calibration data"):
        saliency(model, name, _data(digits), **FAST.get(name, {}))
