"""Losses by name or callable, and the errors a bad loss gets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainsurgeon.data.core import Dataset
from brainsurgeon.errors import ConfigError, NumericalError
from brainsurgeon.losses import LOSSES, checked, loss_name, resolve_loss, task_of
from brainsurgeon.models.adapters import compressible
from brainsurgeon.pruning import SaliencyContext, make_criterion


def test_names_resolve_and_tasks_follow():
    assert (
        resolve_loss(None) is F.cross_entropy and resolve_loss("cross_entropy") is F.cross_entropy
    )
    assert task_of("mse") == task_of("l1") == "regression"
    assert task_of(None) == "classification"
    custom = lambda out, y: (out - y).abs().mean()  # noqa: E731
    assert resolve_loss(custom) is custom and task_of(custom) == "custom"
    assert loss_name("mse") == "mse" and set(LOSSES.names()) == {
        "cosine",
        "cross_entropy",
        "l1",
        "mse",
    }
    out, y = torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])  # (n, 1) against (n,)
    assert resolve_loss("mse")(out, y).item() == pytest.approx(2.5)


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(
        ConfigError, match=r"unknown loss 'mae'; valid: cosine, cross_entropy, l1, mse"
    ):
        resolve_loss("mae")
    with pytest.raises(ConfigError, match="loss must be a name"):
        resolve_loss(3)


def test_checked_refuses_non_scalars_and_nan_naming_the_batch():
    out, y = torch.zeros(4, 2), torch.zeros(4, 2)
    with pytest.raises(ConfigError, match=r"returned \(4, 2\) on batch 3; a loss must return"):
        checked(lambda o, t: (o - t) ** 2, out, y, "batch 3")
    with pytest.raises(NumericalError, match="the loss is nan on batch 2"):
        checked(lambda o, t: torch.tensor(float("nan")), out, y, "batch 2")


def _ctx(loss_fn, n=20):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    data = Dataset(torch.randn(n, 3), torch.randn(n, 2))
    return SaliencyContext(
        model=model, targets=compressible(model), data=data, loss_fn=loss_fn, batch_size=8
    )


def test_statistics_with_a_bad_callable_loss_name_the_batch():
    per_sample = lambda out, y: ((out - y) ** 2).sum(1)  # noqa: E731  (forgot the mean)
    with pytest.raises(ConfigError, match=r"returned \(8,\) while collecting .*\(batch 1 of 3"):
        make_criterion("obd").scores(_ctx(per_sample))

    def nan_on_the_third(out, y, calls=[0]):  # noqa: B006
        calls[0] += 1
        return F.mse_loss(out, y) * (float("nan") if calls[0] > 2 else 1.0)

    with pytest.raises(NumericalError, match=r"the loss is nan .*\(batch 2 of 3 of obd-sd\)"):
        make_criterion("obd-sd").scores(_ctx(nan_on_the_third))


def test_a_callable_loss_drives_the_statistics():
    """OBD's GGN under a user's callable MSE equals OBD under the registered 'mse'."""
    by_name = make_criterion("obd").scores(_ctx(resolve_loss("mse")))
    by_callable = make_criterion("obd").scores(_ctx(lambda o, y: ((o - y) ** 2).mean()))
    for k in by_name:
        assert torch.allclose(by_name[k], by_callable[k], atol=1e-6)
        assert float(by_name[k].abs().sum()) > 0


def test_cosine_loss_and_embedding_agreement_against_brute_force():
    from brainsurgeon.training.evaluation import embedding_agreement

    g = torch.Generator().manual_seed(0)
    y = torch.randn(40, 6, generator=g)
    z = y + 0.5 * torch.randn(40, 6, generator=g)
    cos = [float(torch.dot(a, b) / (a.norm() * b.norm())) for a, b in zip(z, y, strict=True)]
    assert float(resolve_loss("cosine")(z, y)) == pytest.approx(1 - sum(cos) / 40, rel=1e-5)
    assert task_of("cosine") == "embedding"

    def neighbours(e, i):
        sims = [(float(torch.dot(e[i], e[j]) / (e[i].norm() * e[j].norm())), j) for j in range(40)]
        return {j for _, j in sorted((s for s in sims if s[1] != i), reverse=True)[:10]}

    overlap = sum(len(neighbours(z, i) & neighbours(y, i)) for i in range(40)) / 400
    out = embedding_agreement(z, y)
    assert out["cosine"] == pytest.approx(sum(cos) / 40, rel=1e-6)
    assert out["top10"] == pytest.approx(overlap)
    assert embedding_agreement(y, y)["top10"] == 1.0


def test_wide_output_factors_are_sketched_without_bias():
    from brainsurgeon.curvature.outputs import sketch

    g = torch.Generator().manual_seed(0)
    S = torch.randn(2, 100, 100, generator=g, dtype=torch.float64)
    exact = S @ S.transpose(1, 2)
    draws = [sketch(S) for _ in range(400)]
    mean = sum(d @ d.transpose(1, 2) for d in draws) / len(draws)
    assert sketch(S).shape == (2, 100, 64) and sketch(S[:, :, :10]).shape == (2, 100, 10)
    assert (mean - exact).abs().max() < 0.1 * exact.abs().max()
