"""The training loop: determinism, early stopping, schedules, errors."""

from __future__ import annotations

import pytest
import torch

from brainsurgeon.errors import ConfigError, NumericalError
from brainsurgeon.models import build_model
from brainsurgeon.training import TrainConfig, evaluate, fit
from brainsurgeon.training.loop import lr_factor
from brainsurgeon.utils import resolve_device, seed_everything


def train_once(digits, **cfg):
    seed_everything(0)
    model = build_model("lenet300", digits.input_shape, digits.num_classes)
    history = fit(model, digits, TrainConfig(**cfg), progress=False)
    return model, history


def test_seeded_training_is_deterministic_and_learns(digits):
    a, hist = train_once(digits, epochs=3)
    b, _ = train_once(digits, epochs=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert evaluate(a, digits)["accuracy"] > 0.9
    assert [h["epoch"] for h in hist] == [1, 2, 3] and "val_accuracy" in hist[0]


@pytest.mark.parametrize(
    "opt",
    [dict(optimizer="adam", lr=1e-3), dict(optimizer="sgd", nesterov=True, weight_decay=1e-4)],
)
def test_other_optimisers(digits, opt):
    model, _ = train_once(digits, epochs=2, **opt)
    assert evaluate(model, digits)["accuracy"] > 0.8


def test_early_stopping_restores_best(digits):
    _, hist = train_once(digits, epochs=30, patience=1, lr=0.5, schedule="none")
    assert len(hist) < 30 and hist[-1].get("early_stopped")


def test_schedules():
    step = TrainConfig(epochs=6, schedule="step", lr_step=2, lr_gamma=0.5)
    assert [lr_factor(step, e) for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    cos = TrainConfig(epochs=4, schedule="cosine")
    assert lr_factor(cos, 0) == 1.0 and lr_factor(cos, 2) == pytest.approx(0.5)


def test_nan_loss_is_a_clear_error(digits):
    model = build_model("lenet300", digits.input_shape, digits.num_classes)
    with torch.no_grad():
        model.fc1.weight.fill_(float("nan"))
    with pytest.raises(NumericalError, match="training loss became nan .* lower the learning rate"):
        fit(model, digits, TrainConfig(epochs=1), progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epochs=-1), "epochs must be >= 0, got -1"),
        (dict(optimizer="rmsprop"), "unknown optimizer 'rmsprop'; valid: sgd, adam"),
        (dict(lr=0), "learning rate must be > 0"),
        (dict(schedule="linear"), "unknown lr schedule"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="unknown device 'tpu'; valid: auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU; use --device cpu"):
            resolve_device("cuda")
