"""Selection schemes hit the requested sparsity exactly; N:M holds; schedules' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from brainsurgeon.errors import ConfigError, NumericalError
from brainsurgeon.pruning import schedules
from brainsurgeon.pruning.selection import (
    select_class_distribution,
    select_global,
    select_nm,
    select_per_layer,
    select_threshold,
    total_sparsity,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets run fastest on one thread (and do not spin against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scores(seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    s = {
        "a.weight": torch.rand(7, 13, generator=g),
        "b.weight": torch.rand(5, 4, 3, 3, generator=g),
        "c.bias": torch.rand(11, generator=g),
    }
    if ties:  # a few distinct values only: ties everywhere
        s = {k: (v * 3).floor() for k, v in s.items()}
    return s


def _pruned(keep):
    return sum(int((~k).sum()) for k in keep.values())


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("amount", [0.1, 0.5, 0.77, 0.95])
def test_global_hits_the_amount_exactly(amount, ties):
    s = _scores(ties=ties)
    n = sum(v.numel() for v in s.values())
    keep = select_global(s, amount)
    assert _pruned(keep) == round(amount * n)
    # the pruned entries are the lowest: every pruned score <= every kept score
    flat_s = torch.cat([v.flatten() for v in s.values()])
    flat_k = torch.cat([k.flatten() for k in keep.values()])
    assert flat_s[~flat_k].max() <= flat_s[flat_k].min()
    assert all(torch.equal(keep[k], v) for k, v in select_global(s, amount).items())  # determinism


def test_global_breaks_ties_by_position():
    s = {"x": torch.zeros(10)}
    keep = select_global(s, 0.3)
    assert keep["x"].tolist() == [False] * 3 + [True] * 7


def test_already_pruned_entries_go_first_and_masks_only_shrink():
    s = _scores()
    masks = {"a.weight": torch.rand(7, 13, generator=torch.Generator().manual_seed(3)) > 0.5}
    dead = int((~masks["a.weight"]).sum())
    n = sum(v.numel() for v in s.values())
    keep = select_global(s, 0.6, masks=masks)
    assert _pruned(keep) == round(0.6 * n)
    assert not (keep["a.weight"] & ~masks["a.weight"]).any()
    assert dead < round(0.6 * n)


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.9])
def test_per_layer_prunes_each_tensor_exactly(amount):
    s = _scores(ties=True)
    keep = select_per_layer(s, amount)
    for name, k in keep.items():
        assert int((~k).sum()) == round(amount * k.numel()), name


def test_per_layer_uses_layer_sparsity():
    s = _scores()
    keep = select_per_layer(s, 0.5, layer_sparsity={"a.weight": 0.9, "c.bias": 0.0})
    assert int((~keep["a.weight"]).sum()) == round(0.9 * 91)
    assert int((~keep["b.weight"]).sum()) == round(0.5 * 180)
    assert keep["c.bias"].all()


@pytest.mark.parametrize("amount", [0.3, 0.8])
def test_class_distribution_hits_amount_and_matches_the_lambda_rule(amount):
    s = _scores()
    sigma = {k: float(v.std()) for k, v in s.items()}
    n = sum(v.numel() for v in s.values())
    keep, lam = select_class_distribution(s, amount, sigma=sigma)
    assert _pruned(keep) == round(amount * n)
    # the same masks follow from the rule |w| < lam * sigma with the reported lambda
    again, _ = select_class_distribution(s, amount, sigma=sigma, lam=lam)
    for name in s:
        assert torch.equal(again[name], keep[name])
        assert torch.equal(~keep[name], s[name] < lam * sigma[name])


def test_threshold_prunes_below_it():
    s = _scores()
    keep = select_threshold(s, 0.25)
    for name, v in s.items():
        assert torch.equal(keep[name], ~(v < 0.25))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_nm_pattern_holds(n, m):
    g = torch.Generator().manual_seed(0)
    s = {"lin": torch.rand(6, 16, generator=g), "conv": torch.rand(4, 8, 3, 3, generator=g)}
    keep = select_nm(s, n, m)
    lin = keep["lin"].reshape(6, 16 // m, m)
    assert torch.all(lin.sum(-1) == n)
    conv = keep["conv"].movedim(1, -1).reshape(-1, m)
    assert torch.all(conv.sum(-1) == n)
    assert math.isclose(total_sparsity(keep), 1 - n / m)
    # the kept ones are the best of their group
    groups = s["lin"].reshape(6, -1, m)
    kept_min = torch.where(lin, groups, torch.inf).min(-1).values
    pruned_max = torch.where(~lin, groups, -torch.inf).max(-1).values
    assert torch.all(kept_min >= pruned_max)


def test_nm_needs_a_divisible_input_dimension():
    with pytest.raises(ConfigError, match="has 6 inputs, not a multiple of M=4"):
        select_nm({"x": torch.rand(3, 6)}, 2, 4)
    with pytest.raises(ConfigError, match="0 < N < M"):
        select_nm({"x": torch.rand(3, 8)}, 4, 4)


def test_nan_scores_are_refused():
    with pytest.raises(NumericalError, match="scores of x contain NaN"):
        select_global({"x": torch.tensor([0.1, float("nan")])}, 0.5)


def test_amount_outside_unit_interval_is_refused():
    with pytest.raises(ConfigError, match=r"amount must lie in \(0, 1\), got 1.5"):
        select_global(_scores(), 1.5)


# ------------------------------------------------------------------ schedules


def test_iterative_geometric_removes_the_same_fraction_of_the_remaining():
    targets = schedules.plan("iterative", 0.9, rounds=4)
    remaining = [1.0] + [1 - t for t in targets]
    ratios = [b / a for a, b in zip(remaining[:-1], remaining[1:], strict=True)]
    assert all(math.isclose(r, 0.1**0.25) for r in ratios)
    assert math.isclose(targets[-1], 0.9)


def test_iterative_linear_and_oneshot():
    assert schedules.plan("iterative", 0.8, rounds=4, spacing="linear") == pytest.approx(
        [0.2, 0.4, 0.6, 0.8]
    )
    assert schedules.plan("oneshot", 0.7) == [0.7]


def test_gradual_is_zhu_and_gupta_cubic():
    s_i, s_f, n = 0.1, 0.9, 5
    got = schedules.plan("gradual", s_f, rounds=n, initial=s_i)
    want = [s_f + (s_i - s_f) * (1 - t / n) ** 3 for t in range(1, n + 1)]
    assert got == pytest.approx(want)
    assert schedules.cubic(0, s_f, s_i, t0=0, n=n) == pytest.approx(s_i)
    assert schedules.cubic(100, s_f, s_i, t0=0, n=n) == pytest.approx(s_f)
    assert schedules.cubic(30, 0.8, 0.0, t0=10, n=4, dt=10) == pytest.approx(0.8 * (1 - 0.5**3))


def test_steps_go_from_x_to_y():
    assert schedules.plan("steps", 0.9, rounds=5, initial=0.5) == pytest.approx(
        [0.5, 0.6, 0.7, 0.8, 0.9]
    )
    with pytest.raises(ConfigError, match="needs 0 < X < Y"):
        schedules.plan("steps", 0.9, rounds=5, initial=0.0)


def test_unknown_schedule_lists_valid_ones():
    with pytest.raises(
        ConfigError,
        match="unknown pruning schedule 'cubic'; valid: gradual, iterative, oneshot, steps",
    ):
        schedules.plan("cubic", 0.5)
