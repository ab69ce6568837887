"""saliency_check: the same sampled weights for every criterion, scored against measured damage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainsurgeon.errors import ConfigError
from brainsurgeon.pruning.saliency_check import saliency_check


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets run fastest on one thread (and do not spin against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 10))


def test_true_damage_agrees_with_itself_and_rank_only_criteria_have_no_error(digits):
    report = saliency_check(
        _model(),
        ["true-damage", "magnitude", "random"],
        digits,
        weights=60,
        samples=150,
        options={"true-damage": {"weights": 60}},
    )
    rows = {r["criterion"]: r for r in report["criteria"]}
    assert report["weights"] == 60 and report["samples"] == 150
    # the same seed samples the same weights: the measured criterion reproduces the truth
    assert rows["true-damage"]["spearman"] == pytest.approx(1.0)
    assert rows["true-damage"]["kendall"] == pytest.approx(1.0)
    assert rows["true-damage"]["mae"] == pytest.approx(0.0, abs=1e-12)
    assert rows["magnitude"]["mae"] is None and rows["magnitude"]["loss_scale"] is False
    assert abs(rows["random"]["spearman"]) < 0.4


def test_obd_predicts_the_damage_of_a_relu_net_better_than_random(digits):
    model = _model()
    from brainsurgeon.training import TrainConfig, fit

    fit(model, digits, TrainConfig(epochs=15), progress=False)
    report = saliency_check(model, ["obd", "random"], digits, weights=200, samples=300)
    rows = {r["criterion"]: r for r in report["criteria"]}
    assert rows["obd"]["spearman"] > 0.5 > abs(rows["random"]["spearman"])
    assert rows["obd"]["mae"] is not None


def test_variants_of_one_criterion_share_one_measurement(digits):
    from brainsurgeon.pruning import make_criterion

    built = {
        "mag |w|": make_criterion("magnitude"),
        "mag w^2": make_criterion("magnitude", power=2),
    }
    report = saliency_check(_model(), built, digits, weights=50, samples=100)
    rows = {r["criterion"]: r for r in report["criteria"]}
    assert rows["mag |w|"]["spearman"] == pytest.approx(rows["mag w^2"]["spearman"])
    assert rows["mag w^2"]["options"] == {"power": 2}


def test_bad_input_is_refused(digits):
    with pytest.raises(ConfigError, match="at least one criterion"):
        saliency_check(_model(), [], digits)
    with pytest.raises(ConfigError, match="unknown criterion 'obdd'"):
        saliency_check(_model(), ["obdd"], digits)
    with pytest.raises(ConfigError, match=r"options given for \['obs'\]"):
        saliency_check(_model(), ["obd"], digits, options={"obs": {}})
    with pytest.raises(ConfigError, match="needs data"):
        saliency_check(_model(), ["obd"], None)
