"""OBS with the Gauss-Newton Hessian on an exactly quadratic loss: the brute-force oracle.

A linear model ``z = W x`` under MSE has the loss ``L(W) = mean_n mean_c (z_nc - y_nc)^2``,
a quadratic whose Hessian is its Gauss-Newton matrix. At the least-squares optimum ``W*``,
OBS with ``hessian="ggn"`` and negligible damping must give, for every weight ``q``, the
true cost ``min {L(W) : W_q = 0} - L(W*)`` (found by re-solving least squares on the other
columns with ``np.linalg.lstsq``), and its update must land on the re-solved weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from brainsurgeon.data.core import Dataset
from brainsurgeon.losses import resolve_loss
from brainsurgeon.pruning.criteria import SaliencyContext, make_criterion

N, D, C = 60, 5, 3


@pytest.fixture(scope="module")
def problem():
    """A linear layer at its least-squares optimum on noisy targets (float64)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D)) @ (np.eye(D) + 0.5 * rng.standard_normal((D, D)))
    Y = X @ rng.standard_normal((D, C)) + 0.3 * rng.standard_normal((N, C))
    W_star = np.linalg.lstsq(X, Y, rcond=None)[0].T  # (C, D)
    model = nn.Linear(D, C, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W_star))
    return model, X, Y, W_star


def _loss(W: np.ndarray, X: np.ndarray, Y: np.ndarray) -> float:
    return float(np.mean((X @ W.T - Y) ** 2))


def _resolved(W: np.ndarray, X: np.ndarray, Y: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Least squares again with the entries ``removed`` (C, D) bool held at zero."""
    out = np.zeros_like(W)
    for c in range(W.shape[0]):  # the MSE separates over output rows
        free = ~removed[c]
        out[c, free] = np.linalg.lstsq(X[:, free], Y[:, c], rcond=None)[0]
    return out


def _ctx(model, X, Y) -> SaliencyContext:
    data = Dataset(torch.from_numpy(X), torch.from_numpy(Y))
    return SaliencyContext(
        model=model,
        targets={"weight": (model, "weight")},
        data=data,
        loss_fn=resolve_loss("mse"),
        batch_size=16,  # several batches and chunks through the accumulator
    )


@pytest.mark.parametrize("block_size", [None, D])  # exact, and one block per output row
def test_ggn_obs_scores_are_the_true_removal_costs(problem, block_size):
    model, X, Y, W_star = problem
    crit = make_criterion("obs", hessian="ggn", damp=1e-12, block_size=block_size)
    ctx = _ctx(model, X, Y)
    scores = crit.scores(ctx)["weight"].numpy()
    base = _loss(W_star, X, Y)
    for c in range(C):
        for j in range(D):
            removed = np.zeros((C, D), dtype=bool)
            removed[c, j] = True
            best = _resolved(W_star, X, Y, removed)
            assert scores[c, j] == pytest.approx(_loss(best, X, Y) - base, rel=1e-6, abs=1e-12)
            new = crit.compensate(ctx, {"weight": torch.from_numpy(~removed)})["weight"]
            np.testing.assert_allclose(new.numpy(), best, rtol=1e-6, atol=1e-9)


def test_ggn_obs_removes_a_set_like_least_squares(problem):
    model, X, Y, W_star = problem
    crit = make_criterion("obs", hessian="ggn", damp=1e-12)
    ctx = _ctx(model, X, Y)
    removed = np.random.default_rng(1).random((C, D)) < 0.4
    new = crit.compensate(ctx, {"weight": torch.from_numpy(~removed)})["weight"].numpy()
    np.testing.assert_allclose(new, _resolved(W_star, X, Y, removed), rtol=1e-6, atol=1e-9)
    assert np.all(new[removed] == 0)


def test_the_empirical_fisher_is_not_the_hessian_here(problem):
    """The oracle can fail: the default ``hessian="fisher"`` misses the true costs."""
    model, X, Y, W_star = problem
    crit = make_criterion("obs", hessian="fisher", damp=1e-12)
    scores = crit.scores(_ctx(model, X, Y))["weight"].numpy()
    removed = np.zeros((C, D), dtype=bool)
    removed[0, 0] = True
    true = _loss(_resolved(W_star, X, Y, removed), X, Y) - _loss(W_star, X, Y)
    assert abs(scores[0, 0] - true) > 0.05 * true


@pytest.mark.parametrize("ggn_tol", [0.0, 1e-3])
def test_ggn_inverse_is_the_gauss_newton_of_cross_entropy(ggn_tol):
    """``H = lam I + mean_n J_n^T (diag p_n - p_n p_n^T) J_n``, ``J_n`` by autograd."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x, y = torch.randn(30, 6, dtype=torch.float64), torch.randint(0, 4, (30,))
    w = model[2].weight
    ctx = SaliencyContext(
        model=model, targets={"2.weight": (model[2], "weight")}, data=Dataset(x, y), batch_size=7
    )
    crit = make_criterion("obs", ggn_tol=ggn_tol, damp=1e-3)
    got = crit.statistics(ctx).hinv_[0]
    ggn = torch.zeros(w.numel(), w.numel(), dtype=torch.float64)
    for n in range(30):

        def out(weight, n=n):
            h = torch.tanh(model[0](x[n]))
            return nn.functional.linear(h, weight, model[2].bias)

        J = torch.autograd.functional.jacobian(out, w.detach()).reshape(4, -1)
        p = torch.softmax(out(w.detach()), 0)
        ggn += (J.T @ (torch.diag(p) - torch.outer(p, p)) @ J / 30).detach()
    expect = torch.linalg.inv(1e-3 * ggn.diagonal().mean() * torch.eye(20, dtype=ggn.dtype) + ggn)
    tol = 1e-8 if ggn_tol == 0 else 2e-2
    assert torch.allclose(got, expect, rtol=tol, atol=tol * float(expect.abs().max()))
