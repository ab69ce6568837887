"""Regression and custom losses through fit, evaluate and distill; adapter-driven penalties."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainsurgeon.data import DataBundle, Dataset
from brainsurgeon.distillation import DistillConfig, distill
from brainsurgeon.distillation.losses import logit_mse_loss
from brainsurgeon.errors import ConfigError, DataError
from brainsurgeon.losses import mse
from brainsurgeon.training import TrainConfig, evaluate, fit, lp_penalty
from brainsurgeon.training.loop import clip_unit_norms


def _regression(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)
    return x, y


def _mlp(seed: int = 0, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))


@pytest.fixture(scope="module")
def bundle() -> DataBundle:
    splits = {
        s: Dataset(*_regression(n, i))
        for i, (s, n) in enumerate([("train", 512), ("val", 128), ("test", 128)])
    }
    return DataBundle("linear", **splits, num_classes=1, normalization={"mean": 0.0, "std": 1.0})


def test_evaluate_reports_regression_metrics_by_hand(bundle):
    model = _mlp()
    ev = evaluate(model, bundle, loss="mse", batch_size=50)  # several uneven batches
    x, y = bundle.test.x, bundle.test.y
    with torch.no_grad():
        z = model(x).squeeze(1)
    sse = (z - y).pow(2).sum()
    assert ev["task"] == "regression" and ev["samples"] == 128
    assert ev["mse"] == pytest.approx(float(sse / 128), rel=1e-5)
    assert ev["loss"] == pytest.approx(ev["mse"], rel=1e-5)
    assert ev["mae"] == pytest.approx(float((z - y).abs().mean()), rel=1e-5)
    assert ev["rmse"] == pytest.approx(ev["mse"] ** 0.5)
    assert ev["r2"] == pytest.approx(float(1 - sse / (y - y.mean()).pow(2).sum()), rel=1e-5)
    assert "accuracy" not in ev
    # float targets without a loss are regression (mse); l1 reports its own loss
    assert evaluate(model, bundle)["mse"] == pytest.approx(ev["mse"])
    assert evaluate(model, bundle, loss="l1")["loss"] == pytest.approx(ev["mae"], rel=1e-5)


def test_fit_with_mse_reduces_the_error(bundle):
    model = _mlp()
    before = evaluate(model, bundle, loss="mse")["mse"]
    history = fit(model, bundle, TrainConfig(epochs=15, lr=0.02), loss="mse", progress=False)
    after = evaluate(model, bundle, loss="mse")["mse"]
    assert after < 0.05 * before
    assert {"val_loss", "val_mse", "val_mae"} <= set(history[-1]) and "val_accuracy" not in history[
        -1
    ]


def test_fit_accepts_an_xy_tuple_and_a_callable_loss():
    x, y = _regression(256, 3)
    model = _mlp()

    def huber(out, target):
        return nn.functional.smooth_l1_loss(out.squeeze(1), target)

    before = evaluate(model, (x, y), loss=huber)
    fit(
        model,
        (x.double().numpy(), y.double().numpy()),
        TrainConfig(epochs=20, lr=0.05),
        loss=huber,
        progress=False,
    )
    after = evaluate(model, (x, y), loss=huber)
    assert before["task"] == "custom" and set(after) == {"task", "loss", "samples"}
    with torch.no_grad():
        assert after["loss"] == pytest.approx(float(huber(model(x), y)), rel=1e-5)
    assert after["loss"] < 0.3 * before["loss"]


def test_early_stopping_on_regression_keeps_the_lowest_val_loss(bundle):
    model = _mlp()
    history = fit(
        model,
        bundle,
        TrainConfig(epochs=30, lr=0.1, schedule="none", patience=1),
        loss="mse",
        progress=False,
    )
    best = min(h["val_loss"] for h in history)
    assert len(history) <= 30
    assert evaluate(model, bundle.val, loss="mse")["loss"] == pytest.approx(best, rel=1e-5)


def test_bad_losses_teach(bundle):
    model = _mlp()
    with pytest.raises(
        ConfigError, match="unknown loss 'msee'; valid: cosine, cross_entropy, l1, mse"
    ):
        evaluate(model, bundle, loss="msee")
    with pytest.raises(
        ConfigError, match="unknown loss 'msee'; valid: cosine, cross_entropy, l1, mse"
    ):
        fit(model, bundle, TrainConfig(epochs=1), loss="msee", progress=False)
    with pytest.raises(ConfigError, match=r"returned \(64, 64\) on a training batch; .*\.mean\(\)"):
        fit(model, bundle, TrainConfig(epochs=1), loss=lambda o, t: (o - t).pow(2), progress=False)
    with pytest.raises(ConfigError, match=r"returned \(128, 128\) on batch 1 of the test split"):
        evaluate(model, bundle, loss=lambda o, t: (o - t).pow(2))


def test_regression_data_errors():
    x, y = _regression(8, 0)
    with pytest.raises(DataError, match="targets contain NaN"):
        Dataset(x, torch.full((8,), float("nan")))
    with pytest.raises(DataError, match=r"outputs have shape \(8, 1\) but the targets \(8, 2\)"):
        evaluate(_mlp(), (x, torch.zeros(8, 2)), loss="mse")
    assert Dataset(x, y).task == "regression" and Dataset(x, y.long()).task == "classification"


def test_logit_mse_hard_term_is_the_task_loss():
    zs, zt, y = torch.randn(6, 1), torch.randn(6, 1), torch.randn(6)
    got = logit_mse_loss(zs, zt, y, alpha=0.25, hard=mse)
    want = 0.25 * 0.5 * (zs - zt).pow(2).sum(1).mean() + 0.75 * (zs.squeeze(1) - y).pow(2).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_distill_a_regression_student(bundle):
    teacher = _mlp(seed=1, hidden=32)
    fit(teacher, bundle, TrainConfig(epochs=15, lr=0.02), loss="mse", progress=False)
    student = _mlp(seed=2, hidden=8)
    before = evaluate(student, bundle)["mse"]
    config = DistillConfig(loss="logit-mse", alpha=0.5, epochs=10, lr=0.02, batch_size=64)
    result = distill(teacher, student, config, bundle, device="cpu", progress=False, loss="mse")
    assert evaluate(student, bundle)["mse"] < 0.1 * before
    assert "val_mse" in result.history[-1]
    with pytest.raises(ConfigError, match="regression task \\(mse\\).*use loss 'logit-mse'"):
        distill(teacher, _mlp(), DistillConfig(loss="kd"), bundle, device="cpu", progress=False)


def test_penalties_and_max_norm_follow_the_adapter():
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"emb": nn.Embedding(10, 4), "rnn": nn.LSTM(4, 3), "up": nn.ConvTranspose1d(3, 2, 2)}
    )
    with torch.no_grad():
        model["emb"].weight.mul_(10)
    weights = [
        model["emb"].weight,
        model["rnn"].weight_ih_l0,
        model["rnn"].weight_hh_l0,
        model["up"].weight,
    ]
    l1 = float(sum(w.detach().abs().sum() for w in weights))  # biases are not penalised
    assert float(lp_penalty(l1=0.1)(model).detach()) == pytest.approx(0.1 * l1, rel=1e-6)
    emb, up = model["emb"].weight.clone(), model["up"].weight.clone()
    clip_unit_norms(model, 0.5)
    for w in (model["rnn"].weight_ih_l0, model["rnn"].weight_hh_l0):
        assert w.norm(dim=1).max() <= 0.5 + 1e-6  # rows are gate units (outputs on axis 0)
    assert torch.equal(model["emb"].weight, emb) and torch.equal(model["up"].weight, up)


def test_jitter_on_token_ids_is_refused():
    ids, y = torch.randint(0, 10, (16, 4)), torch.randn(16)
    model = nn.Sequential(nn.Embedding(10, 3), nn.Flatten(), nn.Linear(12, 1))
    with pytest.raises(ConfigError, match="inputs are torch.int64 \\(token ids\\?\\); set shift=0"):
        fit(model, (ids, y), TrainConfig(epochs=1, shift=1), progress=False)
    fit(model, (ids, y), TrainConfig(epochs=1), progress=False)  # token ids train fine
