"""The training loop: determinism, early stopping, schedules, errors."""

from __future__ import annotations

import pytest
import torch

from brainsurgeon.data import Dataset
from brainsurgeon.data.augment import shift_images
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


def _batches_seen(digits, **cfg):
    """(inputs, row indices) of every batch ``fit`` feeds the loss, on 64 digits images."""
    x = digits.train.x[:64]
    seen = []

    def loss_fn(model, xb, idx):
        seen.append((xb.clone(), idx.clone()))
        return model(xb).pow(2).mean()

    model = build_model("lenet300", digits.input_shape, digits.num_classes)
    fit(
        model,
        Dataset(x, torch.arange(64)),
        TrainConfig(epochs=2, batch_size=32, **cfg),
        loss_fn=loss_fn,
        progress=False,
    )
    return x, seen


def test_training_jitter_shifts_each_image_within_bounds(digits):
    x, plain = _batches_seen(digits)
    assert all(torch.equal(xb, x[idx]) for xb, idx in plain)  # no jitter by default
    _, jittered = _batches_seen(digits, shift=1)
    moved = 0
    for xb, idx in jittered:
        for image, i in zip(xb, idx, strict=True):
            candidates = [
                shift_images(x[i : i + 1], torch.tensor([[dy, dx]]))[0]
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            ]
            assert any(torch.equal(image, c) for c in candidates), "not a shift of <= 1 pixel"
            moved += not torch.equal(image, x[i])
    assert moved > 64  # most of the 128 images seen were moved
    _, noisy = _batches_seen(digits, noise=0.5)
    assert all((xb - x[idx]).std() > 0.4 for xb, idx in noisy)


def test_max_norm_caps_every_unit_and_binds(digits):
    model, _ = train_once(digits, epochs=2, lr=0.2, max_norm=0.6)
    for layer in (model.fc1, model.fc2, model.fc3):
        norms = layer.weight.flatten(1).norm(dim=1)
        assert norms.max() <= 0.6 + 1e-5
    free, _ = train_once(digits, epochs=2, lr=0.2)
    assert free.fc1.weight.norm(dim=1).max() > 0.6  # the cap was active


def test_max_norm_respects_masks(digits):
    from brainsurgeon.pruning import PruneConfig, prune

    seed_everything(0)
    model = build_model("lenet300", digits.input_shape, digits.num_classes)
    prune(model, PruneConfig(criterion="magnitude", amount=0.5), data=digits)
    zeros = model.fc1.weight == 0
    fit(model, digits, TrainConfig(epochs=1, max_norm=0.5), progress=False)
    assert (model.fc1.weight[zeros] == 0).all()  # pruned weights stay pruned
    assert model.fc1.weight.norm(dim=1).max() <= 0.5 + 1e-5


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
        (dict(shift=-1), "shift must be 0..1024 pixels"),
        (dict(noise=-0.1), "noise must be >= 0"),
        (dict(max_norm=-1.0), "max_norm must be >= 0"),
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


def test_a_model_with_nothing_to_train_is_refused():
    """Every parameter frozen: training would change nothing and say nothing (a benchmark
    once "distilled" a frozen copy of its teacher)."""
    from brainsurgeon import build_model
    from brainsurgeon.errors import ConfigError
    from brainsurgeon.training import TrainConfig, fit

    model = build_model("mlp:4-3-2", (4,), 2).requires_grad_(False)
    data = (torch.randn(16, 4), torch.randint(0, 2, (16,)))
    with pytest.raises(ConfigError, match="nothing to train"):
        fit(model, data, TrainConfig(epochs=1), progress=False)
    fit(model, data, TrainConfig(epochs=0), progress=False)  # no epochs: nothing to refuse
