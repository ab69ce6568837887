"""prune(): schemes through the engine, compensation, rounds, resume, run directories, errors."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from brainsurgeon.errors import ConfigError, UnsupportedLayerError
from brainsurgeon.models import build_model
from brainsurgeon.pruning import (
    PruneConfig,
    make_permanent,
    masks_of,
    prune,
    saliency,
    set_mask,
)
from brainsurgeon.pruning.iterative import _adjusted_dropout
from brainsurgeon.pruning.regularizers import ReweightedL1, group_lasso
from brainsurgeon.training import TrainConfig, evaluate, fit


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets run fastest on one thread (and do not spin against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small(digits):
    """A trained 64-32-16-10 MLP on digits (a second or two)."""
    torch.manual_seed(0)
    model = build_model("mlp:64-32-16-10", digits.input_shape, digits.num_classes)
    fit(model, digits, TrainConfig(epochs=4, seed=0), progress=False)
    return model


def _zeros(model, names):
    return sum(int((model.get_submodule(n.rsplit(".", 1)[0]).weight == 0).sum()) for n in names)


WEIGHTS = ["fc1.weight", "fc2.weight", "fc3.weight"]


@pytest.mark.parametrize("amount", [0.3, 0.9])
@pytest.mark.parametrize("criterion", ["magnitude", "random", "obd"])
def test_global_prune_hits_the_amount_exactly(small, digits, criterion, amount):
    model = copy.deepcopy(small)
    n = sum(model.get_submodule(w[:-7]).weight.numel() for w in WEIGHTS)
    result = prune(
        model, PruneConfig(criterion=criterion, amount=amount, samples=200), digits, progress=False
    )
    assert _zeros(model, WEIGHTS) == round(amount * n)
    assert result.total_sparsity == pytest.approx(round(amount * n) / n)
    assert set(result.sparsity) == set(WEIGHTS)
    assert len(result.rounds) == 1 and 0 <= result.rounds[0]["accuracy"] <= 1
    assert (result.predicted_damage is None) == (criterion != "obd")


@pytest.mark.parametrize(
    "options",
    [
        {"scheme": "per-layer", "amount": 0.6},
        {"scheme": "class-distribution", "amount": 0.7},
        {"scheme": "nm", "nm": (2, 4)},
        {"scheme": "global", "amount": 0.5, "include_bias": True},
        {"scheme": "global", "amount": 0.5, "include_first": False, "include_last": False},
    ],
    ids=["per-layer", "class-distribution", "nm", "bias", "middle-only"],
)
def test_schemes_and_eligibility_through_prune(small, digits, options):
    model = copy.deepcopy(small)
    result = prune(model, PruneConfig(**options), digits, progress=False)
    masks = masks_of(model)
    if options["scheme"] == "per-layer":
        for keep in masks.values():
            assert int((~keep).sum()) == round(0.6 * keep.numel())
    if options["scheme"] == "nm":
        assert torch.all(masks["fc1.weight"].reshape(32, -1, 4).sum(-1) == 2)
        assert result.total_sparsity == 0.5
    if options.get("include_bias"):
        assert "fc1.bias" in masks
        total = sum(k.numel() for k in masks.values())
        assert sum(int((~k).sum()) for k in masks.values()) == round(0.5 * total)
    if options.get("include_first") is False:
        assert set(masks) == {"fc2.weight"} and result.total_sparsity == 0.5
    if options["scheme"] == "class-distribution":
        assert result.rounds[0]["lam"] > 0


def test_threshold_scheme_prunes_scores_below_it(small, digits):
    model = copy.deepcopy(small)
    expected = {n: (s >= 0.1) for n, s in saliency(model, "magnitude").items()}
    prune(model, PruneConfig(scheme="threshold", threshold=0.1), digits, progress=False)
    for name, keep in masks_of(model).items():
        assert torch.equal(keep, expected[name])


def test_obs_compensates_the_surviving_weights(digits):
    torch.manual_seed(0)
    model = build_model("mlp:64-8-10", digits.input_shape, digits.num_classes)
    fit(model, digits, TrainConfig(epochs=20), progress=False)  # near a minimum, as OBS assumes
    before = model.fc1.weight.detach().clone()
    mag, obs = copy.deepcopy(model), copy.deepcopy(model)
    prune(mag, PruneConfig(criterion="magnitude", amount=0.6), digits, progress=False)
    prune(
        obs,
        PruneConfig(criterion="obs", amount=0.6, samples=400, obs_steps=2),
        digits,
        progress=False,
    )
    keep = masks_of(obs)["fc1.weight"]
    assert not torch.allclose(obs.fc1.weight[keep], before[keep])  # the survivors moved
    assert torch.all(obs.fc1.weight[~keep] == 0)
    plain = copy.deepcopy(model)  # the same masks without the OBS update
    for name, k in masks_of(obs).items():
        set_mask(plain.get_submodule(name[:-7]), "weight", k)
    sub = digits.train.subset(400, seed=1)
    loss = {
        m: evaluate(net, sub)["loss"] for m, net in (("obs", obs), ("mag", mag), ("plain", plain))
    }
    assert loss["obs"] < loss["plain"] and loss["obs"] < loss["mag"]


def test_layerwise_obs_solves_each_layer_through_the_engine(small, digits):
    model = copy.deepcopy(small)
    config = PruneConfig(
        criterion="layerwise-obs", amount=0.8, schedule="iterative", rounds=2, samples=300
    )
    result = prune(model, config, digits, progress=False)
    for name in result.sparsity:  # every layer to the amount
        keep = masks_of(model)[name]
        assert int((~keep).sum()) == round(0.8 * keep.numel()), name
        weight = model.get_submodule(name[:-7]).weight
        assert torch.all(weight[~keep] == 0)
    magnitude = copy.deepcopy(small)
    prune(
        magnitude, config.replace(criterion="magnitude", scheme="per-layer"), digits, progress=False
    )
    assert result.rounds[-1]["accuracy"] > evaluate(magnitude, digits)["accuracy"]
    with pytest.raises(ConfigError, match="selects inside its per-layer solve"):
        PruneConfig(criterion="layerwise-obs", scheme="threshold", threshold=0.1)


def test_iterative_rounds_follow_the_schedule_and_keep_zeros(small, digits):
    model = copy.deepcopy(small)
    config = PruneConfig(amount=0.9, schedule="iterative", rounds=3, finetune_epochs=1)
    result = prune(model, config, digits, progress=False)
    targets = [r["target_sparsity"] for r in result.rounds]
    assert targets == pytest.approx([1 - 0.1 ** (k / 3) for k in (1, 2, 3)])
    n = sum(model.get_submodule(w[:-7]).weight.numel() for w in WEIGHTS)
    assert _zeros(model, WEIGHTS) == round(0.9 * n)
    assert all(
        "finetune" in r and r["accuracy"] >= r["accuracy_pruned"] - 0.05 for r in result.rounds
    )


def test_make_permanent_bakes_masks(small, digits):
    model = copy.deepcopy(small)
    prune(model, PruneConfig(amount=0.5), digits, progress=False)
    x = digits.test.x[:8]
    expected = model(x)
    make_permanent(model)
    assert masks_of(model) == {} and "fc1.weight" in model.state_dict()
    assert torch.allclose(model(x), expected)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"amount": 1.0}, ConfigError, r"amount must lie in \(0, 1\), got 1.0"),
        ({"amount": 0.0}, ConfigError, r"amount must lie in \(0, 1\)"),
        ({"scheme": "blind"}, ConfigError, "unknown selection scheme 'blind'; valid: class-"),
        ({"criterion": "obdd"}, ConfigError, "unknown criterion 'obdd'; valid: "),
        ({"criterion_options": {"x": 1}}, ConfigError, r"'magnitude' has no option\(s\) \['x'\]"),
        ({"rounds": 3}, ConfigError, "rounds=3 needs a multi-round schedule"),
        (
            {"scheme": "nm", "schedule": "iterative", "rounds": 2},
            ConfigError,
            "cannot follow schedule 'iterative'",
        ),
        ({"scheme": "threshold"}, ConfigError, "needs threshold=T"),
        ({"layer_sparsity": {"fc1": 0.5}}, ConfigError, "use scheme='per-layer'"),
        ({"lam": 1.0}, ConfigError, "set scheme='class-distribution'"),
    ],
)
def test_bad_configs_fail_clearly(kwargs, error, message):
    with pytest.raises(error, match=message):
        PruneConfig(**kwargs)


def test_config_round_trips_through_a_dict():
    config = PruneConfig(
        criterion="obd",
        criterion_options={"hessian": "fisher"},
        scheme="nm",
        nm=(1, 4),
        include_bias=True,
    )
    again = PruneConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.nm == (1, 4)


def test_bad_inputs_fail_before_touching_the_model(small, digits):
    model = copy.deepcopy(small)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="criterion 'obd' needs data"):
        prune(model, PruneConfig(criterion="obd"), None)
    with pytest.raises(ConfigError, match="fine-tuning needs data"):
        prune(model, PruneConfig(schedule="iterative", rounds=2, finetune_epochs=1), None)
    with pytest.raises(ConfigError, match="layer_sparsity names 'fc9'"):
        prune(model, PruneConfig(scheme="per-layer", layer_sparsity={"fc9": 0.5}), digits)
    with pytest.raises(UnsupportedLayerError, match="names 'relu1', a ReLU: not a compressible"):
        prune(model, PruneConfig(scheme="per-layer", layer_sparsity={"relu1": 0.5}), digits)
    with pytest.raises(ConfigError, match="layers pattern 'conv\\*' matches no compressible"):
        prune(model, PruneConfig(layers=("conv*",)), digits)
    assert masks_of(model) == {}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_model_without_prunable_layers_is_unsupported():
    with pytest.raises(
        UnsupportedLayerError,
        match="has no compressible layer; supported layer types: .*Linear.*register_layout",
    ):
        prune(nn.Sequential(nn.ReLU()), PruneConfig())


def test_layer_sparsity_targets_each_layer(small, digits):
    model = copy.deepcopy(small)
    cfg = PruneConfig(scheme="per-layer", amount=0.5, layer_sparsity={"fc1": 0.9, "fc3.weight": 0})
    result = prune(model, cfg, digits, progress=False)
    assert result.sparsity["fc1.weight"] == pytest.approx(round(0.9 * 2048) / 2048)
    assert result.sparsity["fc2.weight"] == pytest.approx(0.5)
    assert result.sparsity["fc3.weight"] == 0.0


def test_group_lasso_and_reweighted_l1():
    torch.manual_seed(0)
    model = build_model("mlp:4-3-2", (1, 1, 4), 2)
    w1, w2 = model.fc1.weight, model.fc2.weight
    want = sum(w.norm(dim=1).sum() + w.norm(dim=0).sum() for w in (w1, w2))
    assert group_lasso(0.5)(model).item() == pytest.approx(0.5 * want.item(), rel=1e-5)
    rpp = ReweightedL1(lam=0.1, eps=1e-3)
    rpp.reweight(model)
    before = w1.detach().clone()
    rpp.step(model, lr=0.5)
    shrink = 0.5 * 0.1 / (before.abs() + 1e-3)
    assert torch.allclose(w1, before.sign() * (before.abs() - shrink).clamp(min=0))


def test_dropout_is_adjusted_while_fine_tuning_and_restored():
    torch.manual_seed(0)
    model = build_model("mlp:16-8-8-2,dropout=0.5", (1, 4, 4), 2)
    keep = torch.zeros(8, 16, dtype=torch.bool)
    keep[:, :4] = True  # a quarter of fc1's connections left
    set_mask(model.fc1, "weight", keep)
    with _adjusted_dropout(model, True):
        assert model.drop1.p == pytest.approx(0.5 * math.sqrt(0.25))
        assert model.drop2.p == 0.5  # fc2 is not pruned
    assert model.drop1.p == 0.5


def test_final_round_fine_tunes_longer_with_the_chosen_schedule(small, digits):
    model = copy.deepcopy(small)
    config = PruneConfig(
        amount=0.8,
        schedule="iterative",
        rounds=3,
        finetune_epochs=0,
        final_finetune_epochs=2,
        finetune_schedule="cosine",
        finetune_weight_decay=1e-4,
    )
    result = prune(model, config, digits, progress=False)
    tuned = [r for r in result.rounds if "finetune" in r]
    assert [r["round"] for r in tuned] == [3] and len(tuned[0]["finetune"]) == 2
    lrs = [e["lr"] for e in tuned[0]["finetune"]]
    assert lrs[0] > lrs[1]  # annealed, not halved every 2 epochs
    assert config.finetune_config(3, last=True).train_config().weight_decay == 1e-4
    with pytest.raises(ConfigError, match="unknown fine-tuning schedule 'linear'"):
        PruneConfig(finetune_schedule="linear")


def test_nan_weights_are_refused_before_pruning(small, digits):
    from brainsurgeon.errors import NumericalError

    model = copy.deepcopy(small)
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("inf")
    with pytest.raises(NumericalError, match="fc1.weight holds 1 NaN or infinite"):
        prune(model, PruneConfig(amount=0.5), digits, progress=False)
