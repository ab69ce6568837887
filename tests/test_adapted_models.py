"""Every criterion on models beyond MLPs and LeNets: an Embedding + TransformerEncoder
classifier (MultiheadAttention's in_proj_weight, and out_proj which its parent calls
functionally), an LSTM classifier, and a regression net under MSE; against oracles."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from brainsurgeon.curvature import DamageStats, GGNDiagonal, GradientStats
from brainsurgeon.data.core import Dataset
from brainsurgeon.losses import resolve_loss
from brainsurgeon.models.adapters import compressible
from brainsurgeon.pruning import CRITERIA, PruneConfig, SaliencyContext, make_criterion
from brainsurgeon.pruning.step import prune_step

D = torch.float64
FAST = {"dropout-regression": {"masks": 150}, "true-damage": {"weights": 30}}
# The criteria whose scores come from the data (random and magnitude do not).
DATA_DRIVEN = [n for n in CRITERIA.names() if CRITERIA.get(n).needs_data]


class Encoder(nn.Module):
    """Token ids (n, T) -> logits (n, 3) through one TransformerEncoder layer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.enc(self.emb(x)).mean(1))


class Recurrent(nn.Module):
    """Sequences (n, T, 4) -> logits (n, 3) from an LSTM's last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


def _case(kind: str):
    torch.manual_seed(0)
    if kind == "encoder":
        return Encoder().to(D), Dataset(torch.randint(0, 20, (24, 5)), torch.randint(0, 3, (24,)))
    if kind == "lstm":
        return Recurrent().to(D), Dataset(
            torch.randn(24, 5, 4, dtype=D), torch.randint(0, 3, (24,))
        )
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).to(D)
    x = torch.randn(24, 5, dtype=D)
    return model, Dataset(x, x[:, :2].sum(1, keepdim=True).squeeze(1) + 0.1)


LOSS = {"encoder": "cross_entropy", "lstm": "cross_entropy", "regression": "mse"}


def _ctx(model, data, kind):
    model.eval()
    return SaliencyContext(
        model=model,
        targets=compressible(model),
        data=data,
        loss_fn=resolve_loss(LOSS[kind]),
        batch_size=10,
    )


def test_the_adapter_finds_every_compressible_tensor():
    names = set(compressible(_case("encoder")[0]))
    assert {
        "emb.weight",
        "enc.layers.0.self_attn.in_proj_weight",
        "enc.layers.0.self_attn.out_proj.weight",
        "enc.layers.0.linear1.weight",
    } <= names
    assert set(compressible(_case("lstm")[0])) == {
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
        "fc.weight",
    }


@pytest.mark.parametrize("kind", ["encoder", "lstm"])
def test_rules_backend_equals_autograd_where_hooks_cannot_see(kind):
    """Linear layers go through hooks, the rest through torch.func: same statistics."""
    model, data = _case(kind)
    ctx = _ctx(model, data, kind)
    x, y = data.x, data.y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cls in (GGNDiagonal, GradientStats):
            rules = cls(model, ctx.targets, ctx.loss_fn)
            auto = cls(model, ctx.targets, ctx.loss_fn, method="autograd")
            rules.update(x, y)
            auto.update(x, y)
            for name in ctx.targets:
                assert torch.allclose(rules.result()[name], auto.result()[name], atol=1e-10), name
                assert float(rules.result()[name].abs().sum()) > 0, name
        rules, auto = (
            DamageStats(model, ctx.targets, ctx.loss_fn, method=m) for m in ("rules", "autograd")
        )
        rules.update(x, y)
        auto.update(x, y)
        for name in ctx.targets:
            assert torch.allclose(rules.sd()[name], auto.sd()[name], atol=1e-10), name


def _options(name):
    if name == "obd":
        return [{"hessian": h} for h in ("exact", "ggn", "fisher", "hutchinson")]
    return [FAST.get(name, {})]


@pytest.mark.parametrize("kind", ["encoder", "lstm", "regression"])
@pytest.mark.parametrize("name", CRITERIA.names())
def test_every_criterion_scores_every_tensor(name, kind):
    model, data = _case(kind)
    before = copy.deepcopy(model.state_dict())
    for options in _options(name):
        ctx = _ctx(model, data, kind)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = make_criterion(name, **options).scores(ctx)
        assert set(scores) == set(ctx.targets)
        for key, s in scores.items():
            assert s.shape == ctx.tensor(key).shape and not torch.isnan(s).any(), (key, options)
            if name in DATA_DRIVEN and name != "true-damage":  # true-damage samples 30 weights
                assert float(s.abs().sum()) > 0, f"{name} {options}: {key} scored all zero"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_obd_under_mse_is_half_the_exact_hessian_times_w_squared():
    """A regression net: OBD's exact diagonal against the autograd Hessian of the MSE."""
    model, data = _case("regression")
    ctx = _ctx(model, data, "regression")
    scores = make_criterion("obd", hessian="exact").scores(ctx)
    w = model[2].weight.detach()
    loss = resolve_loss("mse")

    def f(weight):
        return loss(torch.func.functional_call(model, {"2.weight": weight}, (data.x,)), data.y)

    H = torch.autograd.functional.hessian(f, w).reshape(w.numel(), w.numel())
    expected = 0.5 * H.diagonal().reshape(w.shape) * w.pow(2)
    assert torch.allclose(scores["2.weight"], expected, atol=1e-12)
    assert float(expected.abs().sum()) > 0


@pytest.mark.parametrize("name", CRITERIA.names())
def test_a_regression_net_is_pruned_by_every_criterion(name):
    model, data = _case("regression")
    ctx = _ctx(model, data, "regression")
    config = PruneConfig(
        criterion=name, criterion_options=FAST.get(name, {}), amount=0.5, scheme="per-layer"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = prune_step(
            model,
            make_criterion(name, **FAST.get(name, {})),
            config,
            ctx.targets,
            amount=0.5,
            layer_amounts=None,
            data=data,
            seed=0,
            device=torch.device("cpu"),
            progress=False,
            loss_fn=ctx.loss_fn,
        )
    assert abs(record["sparsity"] - 0.5) < 0.03
    out = model(data.x)
    assert torch.isfinite(out).all()


def _hessian_of(model, module, tensor, run):
    from brainsurgeon.curvature.layer_inputs import LayerInputStats, hooks_visible, input_owner

    stats = LayerInputStats(module, "t", D, tensor=tensor, owner=input_owner(model, module))
    stats.attach()
    with torch.no_grad(), hooks_visible():
        run()
    stats.detach()
    return stats.hessian()


def test_input_hessians_where_hooks_cannot_see_equal_the_output_change():
    """``||dW X||^2 / N = tr(dW (H/2) dW^T)``: the Hessian of out_proj (run functionally by its
    parent attention) and of an embedding predict the measured change of the outputs."""
    from brainsurgeon.curvature.layer_inputs import weight_matrix

    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2, batch_first=True).to(D).eval()
    x = torch.randn(6, 5, 8, dtype=D)
    H = _hessian_of(attn, attn.out_proj, "weight", lambda: attn(x, x, x))
    dW = torch.randn(8, 8, dtype=D) * 0.1
    with torch.no_grad():
        before = attn(x, x, x)[0]
        attn.out_proj.weight += dW
        change = (attn(x, x, x)[0] - before).reshape(-1, 8).pow(2).sum(1).mean()
    assert torch.allclose(change, torch.trace(dW @ (H / 2) @ dW.T), rtol=1e-10)

    emb = nn.Embedding(7, 3).to(D)
    ids = torch.randint(0, 7, (4, 9))
    H = _hessian_of(emb, emb, "weight", lambda: emb(ids))
    dE = torch.randn(7, 3, dtype=D)
    change = (emb(ids) - (emb.weight + dE)[ids]).reshape(-1, 3).pow(2).sum(1).mean()
    dM = weight_matrix(emb, "weight", dE)  # (3, 7): outputs x tokens
    assert torch.allclose(change.detach(), torch.trace(dM @ (H / 2) @ dM.T), rtol=1e-10)


def test_lstm_input_hessians_follow_the_input_and_the_previous_hidden_state():
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4, batch_first=True).to(D)
    x = torch.randn(5, 6, 3, dtype=D)
    H_ih = _hessian_of(rnn, rnn, "weight_ih_l0", lambda: rnn(x))
    H_hh = _hessian_of(rnn, rnn, "weight_hh_l0", lambda: rnn(x))
    cell = nn.LSTMCell(3, 4).to(D)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in rnn.state_dict().items()})
    h = c = torch.zeros(5, 4, dtype=D)
    prev = []
    with torch.no_grad():
        for t in range(6):
            prev.append(h)
            h, c = cell(x[:, t], (h, c))
    P = torch.stack(prev, 1).reshape(-1, 4)
    X = x.reshape(-1, 3)
    assert torch.allclose(H_ih, 2 * X.T @ X / X.shape[0], atol=1e-12)
    assert torch.allclose(H_hh, 2 * P.T @ P / P.shape[0], atol=1e-12)


@pytest.mark.parametrize("kind", ["encoder", "lstm"])
def test_fisher_equals_a_per_sample_autograd_loop(kind):
    """An oracle independent of torch.func: one backward pass per sample."""
    model, data = _case(kind)
    ctx = _ctx(model, data, kind)
    acc = GradientStats(model, ctx.targets, ctx.loss_fn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc.update(data.x, data.y)
    params = [getattr(m, t) for m, t in ctx.targets.values()]
    squares = [torch.zeros_like(p) for p in params]
    for i in range(len(data)):
        loss = ctx.loss_fn(model(data.x[i : i + 1]), data.y[i : i + 1])
        for s, g in zip(squares, torch.autograd.grad(loss, params), strict=True):
            s += g.pow(2) / len(data)
    for name, s in zip(ctx.targets, squares, strict=True):
        assert torch.allclose(acc.result()[name], s, atol=1e-12), name


@pytest.mark.parametrize("kind", ["encoder", "lstm"])
def test_prune_reaches_every_tensor_not_only_the_head(kind):
    """The first wave pruned only an LSTM's 3-output head "to 50%"; now every weight."""
    from brainsurgeon.pruning import prune

    model, data = _case(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = prune(
            model,
            PruneConfig(criterion="obd", amount=0.5, scheme="per-layer"),
            data,
            loss=LOSS[kind],
            device="cpu",
            progress=False,
        )
    assert set(result.sparsity) == set(compressible(model))
    for name, s in result.sparsity.items():
        assert abs(s - 0.5) < 0.02, name
    assert abs(result.total_sparsity - 0.5) < 0.01


def test_prune_restores_every_submodule_mode():
    """A pretrained model in eval mode inside a wrapper in train mode: its dropout stays off."""
    from brainsurgeon.pruning import prune

    model, data = _case("encoder")
    model.train()
    model.enc.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    prune(model, PruneConfig(criterion="obd-sd", amount=0.3), data, device="cpu", progress=False)
    assert {n: m.training for n, m in model.named_modules() if n in modes} == modes


def test_prune_reports_sparsity_over_every_parameter_and_what_stayed_dense():
    from brainsurgeon.pruning import prune

    model, data = _case("encoder")
    result = prune(model, PruneConfig(amount=0.5), data, device="cpu", progress=False)
    assert 0 < result.model_sparsity < result.total_sparsity == pytest.approx(0.5, abs=1e-3)
    assert result.left_dense["enc.layers.0.norm1.weight"].startswith("LayerNorm has no layout")
    assert result.left_dense["fc.bias"].startswith("bias")


def test_obs_says_which_inverse_its_memory_budget_chose(digits):
    from brainsurgeon.pruning import prune

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    small = digits.train.subset(64, seed=0)
    for options, chosen in (({}, "exact"), ({"max_memory": 2**20}, "WoodFisher blocks of")):
        m = copy.deepcopy(model)
        config = PruneConfig(criterion="obs", criterion_options=options, amount=0.5, samples=64)
        result = prune(m, config, small, device="cpu", progress=False)
        assert result.rounds[0]["obs_inverse"].startswith(chosen)
