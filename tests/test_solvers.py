"""OBS-family solvers against brute-force least squares on exactly quadratic problems."""

from __future__ import annotations

import itertools

import pytest
import torch

from brainsurgeon.errors import ConfigError, NumericalError
from brainsurgeon.solvers import (
    damped_inverse_cholesky,
    gptq,
    inverse_from_gram,
    inverse_from_vectors,
    layer_obs_update,
    obc_prune,
    obs_remove_set,
    obs_single,
    sparsegpt,
)

D = torch.float64


def _layer(rows=8, cols=16, n=256, corr=0.5, seed=0):
    """A random layer with correlated inputs: ``W`` (rows, cols), ``X`` (n, cols), ``H``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, cols, generator=g, dtype=D)
    x = z + corr * torch.roll(z, 1, 1) + corr * 2 * torch.randn(n, 1, generator=g, dtype=D)
    w = torch.randn(rows, cols, generator=g, dtype=D)
    return w, x, 2 * x.T @ x / n


def _err(w, w_new, x):
    return float(((w - w_new) @ x.T).pow(2).sum())


def _constrained_lstsq(w, x, removed):
    """Brute force: min ||(w' - w) X^T||^2 per row with w'[removed] = 0 (plain lstsq)."""
    out = torch.zeros_like(w)
    for r in range(w.shape[0]):
        free = ~removed[r]
        target = x @ w[r]
        sol = torch.linalg.lstsq(x[:, free], target.unsqueeze(1)).solution.squeeze(1)
        out[r, free] = sol
    return out


# ------------------------------------------------------------------ global OBS (quadratic loss)


def _regression(p=6, n=40, seed=0):
    """Linear regression with MSE: L(w) = mean (x w - t)^2 is exactly quadratic, H = 2 X^T X / n."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=D) @ torch.randn(p, p, generator=g, dtype=D)
    t = x @ torch.randn(p, generator=g, dtype=D) + 0.1 * torch.randn(n, generator=g, dtype=D)
    w = torch.linalg.lstsq(x, t.unsqueeze(1)).solution.squeeze(1)  # the trained optimum
    return x, t, w, 2 * x.T @ x / n


def _loss(x, t, w):
    return float((x @ w - t).pow(2).mean())


def test_obs_single_is_the_brute_force_best_removal():
    x, t, w, H = _regression()
    q, dw = obs_single(w, torch.linalg.inv(H))
    base = _loss(x, t, w)
    brute = []
    for j in range(len(w)):  # retrain with w_j fixed at 0
        free = [i for i in range(len(w)) if i != j]
        sol = torch.linalg.lstsq(x[:, free], t.unsqueeze(1)).solution.squeeze(1)
        full = torch.zeros_like(w)
        full[free] = sol
        brute.append((_loss(x, t, full) - base, full))
    best = min(range(len(w)), key=lambda j: brute[j][0])
    assert q == best
    assert torch.allclose(w + dw, brute[best][1], atol=1e-9)
    Hinv = torch.linalg.inv(H)
    assert brute[q][0] == pytest.approx(float(w[q] ** 2 / (2 * Hinv[q, q])), rel=1e-8)


def test_obs_remove_set_matches_constrained_least_squares():
    x, t, w, H = _regression(p=7)
    Q = torch.tensor([0, 3, 5])
    new = obs_remove_set(w, torch.linalg.inv(H), Q)
    free = [i for i in range(7) if i not in Q.tolist()]
    sol = torch.linalg.lstsq(x[:, free], t.unsqueeze(1)).solution.squeeze(1)
    expect = torch.zeros_like(w)
    expect[free] = sol
    assert torch.allclose(new, expect, atol=1e-9)
    assert torch.all(new[Q] == 0)
    # bool masks and a batch of problems give the same answer
    mask = torch.zeros(7, dtype=torch.bool)
    mask[Q] = True
    batched = obs_remove_set(w.expand(3, 7), torch.linalg.inv(H).expand(3, 7, 7), mask.expand(3, 7))
    assert torch.allclose(batched, expect.expand(3, 7), atol=1e-9)


# ------------------------------------------------------------------ layer-wise


def test_layerwise_single_removal_matches_the_closed_form_optimum():
    w, x, H = _layer(rows=1, cols=10)
    new, keep = obc_prune(w, H, sparsity=0.1, damp=0.0)
    removed = ~keep
    assert int(removed.sum()) == 1
    # closed form: the best q minimises w_q^2 / [H^-1]_qq; brute force over every q
    errs = [
        _err(w, _constrained_lstsq(w, x, torch.eye(10, dtype=torch.bool)[q : q + 1]), x)
        for q in range(10)
    ]
    best = min(range(10), key=errs.__getitem__)
    assert bool(removed[0, best])
    assert torch.allclose(new, _constrained_lstsq(w, x, removed), atol=1e-8)
    Hinv = torch.linalg.inv(H)
    assert _err(w, new, x) / x.shape[0] == pytest.approx(
        float(w[0, best] ** 2 / Hinv[best, best]) / 2, rel=1e-8
    )


def test_obc_greedy_is_optimal_on_tiny_rows():
    """Two removals out of five: the OBC update equals the constrained optimum of its mask."""
    w, x, H = _layer(rows=3, cols=5, corr=0.3)
    new, keep = obc_prune(w, H, sparsity=0.4, damp=0.0)
    assert int((~keep).sum()) == 6
    assert torch.allclose(new, _constrained_lstsq(w, x, ~keep), atol=1e-8)
    # and the greedy is close to the exhaustive best per row (within 25%)
    for r in range(3):
        best = min(
            _err(w[r : r + 1], _constrained_lstsq(w[r : r + 1], x, _mask_of(5, pair)), x)
            for pair in itertools.combinations(range(5), int((~keep[r]).sum()))
        )
        assert _err(w[r : r + 1], new[r : r + 1], x) <= 1.25 * best + 1e-9


def _mask_of(cols, idx):
    m = torch.zeros(1, cols, dtype=torch.bool)
    m[0, list(idx)] = True
    return m


@pytest.mark.parametrize("solver", ["obc", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_reconstruction_beats_magnitude_on_random_layers(solver, sparsity):
    for seed in range(3):
        w, x, H = _layer(rows=16, cols=32, seed=seed)
        if solver == "obc":
            new, keep = obc_prune(w, H, sparsity)
        else:
            new, keep = sparsegpt(w, H, sparsity, block_size=8)
        k = round(sparsity * w.numel())
        assert int((~keep).sum()) == k  # exact sparsity
        assert torch.all(new[~keep] == 0)
        thresh = w.abs().flatten().sort().values[k - 1]
        magnitude = w * (w.abs() > thresh)
        assert _err(w, new, x) < 0.8 * _err(w, magnitude, x)


@pytest.mark.parametrize("solver", [obc_prune, sparsegpt])
def test_nm_pattern_holds(solver):
    w, x, H = _layer(rows=6, cols=16)
    new, keep = solver(w, H, nm=(2, 4))
    assert torch.all(keep.view(6, 4, 4).sum(-1) == 2)
    assert torch.all(new[~keep] == 0)
    # a 2:4 reconstruction beats keeping the 2 largest of every 4
    top = w.abs().view(6, 4, 4).topk(2, dim=-1).indices
    mag = torch.zeros(6, 4, 4, dtype=torch.bool).scatter_(2, top, True).view(6, 16)
    assert _err(w, new, x) < _err(w, w * mag, x)


@pytest.mark.parametrize("solver", [obc_prune, sparsegpt])
def test_already_pruned_entries_stay_pruned(solver):
    w, x, H = _layer(rows=4, cols=8)
    keep0 = torch.ones(4, 8, dtype=torch.bool)
    keep0[:, 0] = False
    new, keep = solver(w, H, 0.5, keep=keep0)
    assert not keep[:, 0].any() and torch.all(new[:, 0] == 0)
    assert int((~keep).sum()) == 16


def test_sparsegpt_with_one_block_per_column_equals_obs_with_its_mask():
    """The blocked loop is the sequential OBS update: same result as solving with the mask."""
    w, x, H = _layer(rows=5, cols=12)
    new_a, keep_a = sparsegpt(w, H, nm=(1, 4), block_size=4, damp=0.0)
    new_b, keep_b = sparsegpt(w, H, nm=(1, 4), block_size=12, damp=0.0)
    assert torch.equal(keep_a, keep_b)
    assert torch.allclose(new_a, new_b, atol=1e-9)


def _textbook_obs_columns(w, H, keep):
    """Sequential OBS over columns with explicit ``H^-1`` downdates: zero column j where
    ``keep`` is False and spread the error to the columns on its right."""
    w, Hinv = w.clone(), torch.linalg.inv(H)
    for j in range(w.shape[1]):
        err = w[:, j] * ~keep[:, j] / Hinv[j, j]
        w -= err.unsqueeze(1) * Hinv[j].unsqueeze(0)
        w[:, j] = w[:, j] * keep[:, j]
        Hinv = Hinv - Hinv[:, j : j + 1] @ Hinv[j : j + 1] / Hinv[j, j]
    return w


@pytest.mark.parametrize("block_size", [1, 5, 128])
def test_sparsegpt_loop_is_the_textbook_sequential_obs(block_size):
    """With the mask forced through ``keep`` (half of every column), the fast transposed loop
    must reproduce the column-by-column OBS update exactly."""
    w, x, H = _layer(rows=6, cols=14)
    g = torch.Generator().manual_seed(3)
    keep = torch.ones(6, 14, dtype=torch.bool)
    for j in range(14):
        keep[torch.randperm(6, generator=g)[:3], j] = False
    new, got = sparsegpt(w, H, 0.5, keep=keep, block_size=block_size, damp=0.0)
    assert torch.equal(got, keep)
    assert torch.allclose(new, _textbook_obs_columns(w, H, keep), atol=1e-9)


@pytest.mark.parametrize("n", [5, 40])  # fewer and more vectors than the block size 12
def test_woodbury_and_gram_inverses_are_the_damped_inverse(n):
    g = torch.Generator().manual_seed(n)
    G = torch.randn(3, n, 12, generator=g, dtype=D)  # 3 blocks of 12 coordinates
    lam = 0.05
    expect = torch.linalg.inv(lam * torch.eye(12, dtype=D) + G.mT @ G / n)
    assert torch.allclose(inverse_from_vectors(G, n, lam), expect, atol=1e-8)
    assert torch.allclose(inverse_from_gram(G.mT @ G, n, lam), expect, atol=1e-8)
    with pytest.raises(NumericalError, match="not positive definite; raise damp"):
        inverse_from_gram(-(G.mT @ G), n, lam)


def test_layer_obs_update_is_the_constrained_optimum():
    w, x, H = _layer(rows=4, cols=9)
    keep = torch.rand(4, 9, generator=torch.Generator().manual_seed(1)) > 0.4
    new = layer_obs_update(w, H, keep, damp=0.0)
    assert torch.allclose(new, _constrained_lstsq(w, x, ~keep), atol=1e-8)


# ------------------------------------------------------------------ GPTQ


def _rtn(scale, lo=-4, hi=3):
    return lambda col, j: (col / scale).round().clamp(lo, hi) * scale


def test_gptq_beats_round_to_nearest_with_correlated_inputs():
    for seed in range(3):
        w, x, H = _layer(rows=16, cols=64, corr=0.9, seed=seed)
        quant = _rtn(float(w.abs().max()) / 3)
        wq = gptq(w, H, quant, block_size=16)
        assert _err(w, wq, x) < 0.7 * _err(w, quant(w, 0), x)
        # every entry is on the grid
        grid = wq / (float(w.abs().max()) / 3)
        assert torch.allclose(grid, grid.round(), atol=1e-9)


def test_gptq_is_sequential_obs_and_block_size_does_not_matter():
    w, x, H = _layer(rows=6, cols=20)
    quant = _rtn(float(w.abs().max()) / 3)
    ref, Hinv = w.clone(), torch.linalg.inv(H)
    for j in range(20):  # the textbook OBQ loop with explicit H^-1 downdates
        q = quant(ref[:, j], j)
        err = (ref[:, j] - q) / Hinv[j, j]
        ref -= err.unsqueeze(1) * Hinv[j].unsqueeze(0)
        ref[:, j] = q
        Hinv = Hinv - Hinv[:, j : j + 1] @ Hinv[j : j + 1] / Hinv[j, j]
    for bs in (1, 7, 128):
        assert torch.allclose(gptq(w, H, quant, block_size=bs, damp=0.0), ref, atol=1e-8)


def test_gptq_keeps_pruned_entries_zero_and_passes_column_indices():
    w, x, H = _layer(rows=4, cols=10)
    keep = torch.rand(4, 10, generator=torch.Generator().manual_seed(0)) > 0.5
    seen = []

    def quant(col, j):
        seen.append(j)
        return col.round()

    wq = gptq(w, H, quant, keep=keep)
    assert seen == list(range(10))
    assert torch.all(wq[~keep] == 0)
    assert wq.dtype == w.dtype and wq.shape == w.shape


def test_dead_inputs_are_zeroed_not_fatal():
    w, x, H = _layer(rows=3, cols=6)
    H[2, :] = 0
    H[:, 2] = 0
    wq = gptq(w, H, lambda c, j: c.round())
    assert torch.all(wq[:, 2] == 0) and torch.isfinite(wq).all()
    new, keep = sparsegpt(w, H, 0.5)
    assert torch.all(new[:, 2] == 0) and torch.isfinite(new).all()
    U, dead = damped_inverse_cholesky(H)
    assert dead.tolist() == [False, False, True, False, False, False]


def test_bad_inputs_fail_clearly():
    w, x, H = _layer(rows=3, cols=6)
    with pytest.raises(ConfigError, match=r"expected W \(rows, cols\) and H \(cols, cols\)"):
        gptq(w, H[:5, :5], lambda c, j: c)
    with pytest.raises(ConfigError, match="N:M groups of 4 must tile the 6 input columns"):
        sparsegpt(w, H, nm=(2, 4))
    with pytest.raises(ConfigError, match="N:M needs 0 < N < M"):
        obc_prune(w, H, nm=(4, 2))
    with pytest.raises(ConfigError, match=r"sparsity must lie in \(0, 1\)"):
        sparsegpt(w, H, 1.5)
    with pytest.raises(ConfigError, match="must return a tensor of shape"):
        gptq(w, H, lambda c, j: c[:2])
    with pytest.raises(NumericalError, match="not positive definite after damping"):
        gptq(w, -torch.eye(6, dtype=D), lambda c, j: c, damp=0.0)
