"""Quantizer math against hand-made tensors and brute-force oracles (scikit-learn, autograd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SKKMeans

from brainsurgeon.quantization.cluster import lloyd, scalar_init
from brainsurgeon.quantization.methods.binary import BinaryQuant, binary_alpha
from brainsurgeon.quantization.methods.kmeans import KMeansQuant, kmeans_codebook
from brainsurgeon.quantization.methods.product import Product, ProductConfig
from brainsurgeon.quantization.methods.residual import residual_codebooks
from brainsurgeon.quantization.methods.ternary import TernaryQuant, ternary_params
from brainsurgeon.quantization.methods.uniform import (
    UniformConfig,
    UniformQuant,
    code_range,
    fit_grid,
)
from brainsurgeon.quantization.registry import LayerPlan


def _layer(weight: torch.Tensor, bits: int, keep=None) -> LayerPlan:
    module = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        module.weight.copy_(weight)
    return LayerPlan("fc", module, bits, keep)


def _spread_weights(seed: int, rows: int = 16, cols: int = 40) -> torch.Tensor:
    """Rows with very different scales, so per-channel grids matter."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 0, rows)[torch.randperm(rows, generator=g)]
    return torch.randn(rows, cols, generator=g) * scales[:, None] + 0.1 * scales[:, None]


def _uniform(weight, bits, **kw) -> tuple[UniformQuant, torch.Tensor]:
    config = UniformConfig(bits=bits, **kw)
    scale, zero = fit_grid(_layer(weight, bits), config, bits)
    q = UniformQuant(scale, zero, bits, config.symmetric, weight.numel())
    return q, q(weight)


# ------------------------------------------------------------------------------ uniform


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("granularity", ["per-tensor", "per-channel"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_uniform_round_trip_error_is_at_most_half_a_step(bits, granularity, symmetric):
    w = _spread_weights(bits)
    q, w_hat = _uniform(w, bits, granularity=granularity, symmetric=symmetric)
    step = q.scale.reshape(-1, 1).expand(w.shape[0], 1)
    assert ((w_hat - w).abs() <= step / 2 + 1e-6).all()
    codes = q.integer(w)
    qmin, qmax = code_range(bits, symmetric)
    assert codes.min() >= qmin and codes.max() <= qmax
    levels = torch.unique(w_hat[0])
    assert len(levels) <= 2**bits
    assert torch.allclose(w_hat, (codes - q.zero_point.reshape(-1, 1)) * q.scale.reshape(-1, 1))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rng", ["minmax", "mse"])
def test_per_channel_is_never_worse_than_per_tensor(seed, rng):
    w = _spread_weights(seed)
    for bits in (2, 3, 4, 8):
        _, per_tensor = _uniform(w, bits, granularity="per-tensor", range=rng)
        _, per_channel = _uniform(w, bits, granularity="per-channel", range=rng)
        assert ((per_channel - w) ** 2).sum() <= ((per_tensor - w) ** 2).sum()


def test_symmetric_grid_has_zero_point_zero_and_asymmetric_keeps_zero_exact():
    w = _spread_weights(0)
    q, w_hat = _uniform(w, 4, symmetric=True)
    assert torch.equal(q.zero_point, torch.zeros_like(q.zero_point))
    assert q.scale.shape == (w.shape[0],)
    w = w.clone()
    w[:, ::3] = 0.0
    q, _ = _uniform(w.abs() + 0.1, 3, symmetric=False)  # positive rows: range widened to 0
    assert (q.zero_point == 0).all()
    _, w_hat = _uniform(w, 3, symmetric=False)
    assert (w_hat[:, ::3] == 0).all()
    assert (q.zero_point == q.zero_point.round()).all()


def test_mse_and_percentile_ranges_clip_outliers():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 4000, generator=g)
    w[0, 0] = 40.0  # one outlier ruins a min-max grid
    errs = {}
    for rng in ("minmax", "percentile", "mse"):
        q, w_hat = _uniform(w, 4, granularity="per-tensor", range=rng, percentile=99.0)
        errs[rng] = ((w_hat - w) ** 2).sum().item()
        if rng == "percentile":
            assert w_hat.max() < 5.0  # clipped near the 99th percentile (~2.3)
    assert errs["mse"] < errs["minmax"] and errs["percentile"] < errs["minmax"]


def test_uniform_ste_passes_the_gradient_through():
    w = torch.randn(5, 7, requires_grad=True)
    q, _ = _uniform(w.detach(), 3)
    upstream = torch.randn(5, 7)
    (q(w) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)


# ------------------------------------------------------------------------------ binary, ternary


def test_binary_formula_on_a_hand_made_tensor():
    w = torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.5, 0.2]])
    alpha = binary_alpha(w, None, per_channel=True)
    assert torch.allclose(alpha, torch.tensor([2.0, 0.4]))
    expected = torch.tensor([[2.0, -2.0, 2.0], [-0.4, 0.4, 0.4]])
    assert torch.allclose(BinaryQuant(alpha, 6)(w), expected)
    tensor_alpha = binary_alpha(w, None, per_channel=False)
    assert torch.allclose(tensor_alpha, torch.tensor([7.2 / 6]))
    # pruned (kept = False) weights are left out of alpha and stay 0
    keep = torch.tensor([[True, True, False], [True, True, True]])
    alpha = binary_alpha(w * keep, keep, per_channel=True)
    assert torch.allclose(alpha, torch.tensor([1.5, 0.4]))
    assert BinaryQuant(alpha, 5)(w * keep)[0, 2] == 0


def test_ternary_formula_on_a_hand_made_tensor():
    w = torch.tensor([[0.1, -1.0, 2.0, -0.3], [0.4, -0.4, 0.05, 1.6]])
    alpha, delta = ternary_params(w, None, per_channel=True)
    # row 0: mean|w| = 0.85, delta = 0.595, above: 1.0, 2.0 -> alpha = 1.5
    # row 1: mean|w| = 0.6125, delta = 0.42875, above: 1.6 -> alpha = 1.6
    assert torch.allclose(delta, torch.tensor([0.595, 0.42875]))
    assert torch.allclose(alpha, torch.tensor([1.5, 1.6]))
    expected = torch.tensor([[0.0, -1.5, 1.5, 0.0], [0.0, 0.0, 0.0, 1.6]])
    assert torch.allclose(TernaryQuant(alpha, delta, 8)(w), expected)


# ------------------------------------------------------------------------------ k-means


@pytest.mark.parametrize("init", ["linear", "density", "random"])
@pytest.mark.parametrize("k", [2, 4, 8])
def test_kmeans_matches_scikit_learn_from_the_same_init(init, k):
    g = torch.Generator().manual_seed(k)
    values = torch.cat(
        [torch.randn(600, generator=g) * 0.05 - 0.2, torch.randn(400, generator=g) * 0.08 + 0.3]
    ).double()
    start = scalar_init(values, k, init, seed=3)
    ours, labels = kmeans_codebook(values, k, init, seed=3, max_iter=10_000)
    sk = SKKMeans(k, init=start.numpy(), n_init=1, max_iter=10_000, tol=0.0, algorithm="lloyd").fit(
        values.numpy()[:, None]
    )
    assert np.allclose(ours.numpy(), sk.cluster_centers_[:, 0], atol=1e-9)
    assert np.array_equal(labels.numpy(), sk.labels_)


def test_vector_lloyd_matches_scikit_learn():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g).double()
    x[:100] += 3
    start = x[torch.randperm(300, generator=g)[:5]]
    ours, labels = lloyd(x, start, max_iter=10_000)
    sk = SKKMeans(5, init=start.numpy(), n_init=1, max_iter=10_000, tol=0.0, algorithm="lloyd").fit(
        x.numpy()
    )
    assert np.allclose(ours.numpy(), sk.cluster_centers_, atol=1e-9)


def test_kmeans_inits_follow_han():
    values = torch.tensor([0.0, 0.1, 0.2, 0.3, 1.0, 2.0, 10.0])
    assert torch.allclose(scalar_init(values, 3, "linear")[:, 0], torch.tensor([0.0, 5.0, 10.0]))
    # density: the (i + 1/2)/k quantiles -> many centroids where weights are dense
    dens = scalar_init(values, 3, "density")[:, 0]
    assert torch.allclose(dens, torch.tensor([0.1, 0.3, 2.0]))
    rand = scalar_init(values, 4, "random", seed=1)[:, 0]
    assert len(set(rand.tolist())) == 4 and set(rand.tolist()) <= set(values.tolist())


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 9, generator=g)
    codebook, labels = kmeans_codebook(w.flatten(), 4, "linear")
    indices = labels.reshape(6, 9).clone()
    indices[0, :3] = 4  # three pruned weights: sentinel index, decode to 0
    q = KMeansQuant(codebook, indices, bits=2)
    x = torch.randn(5, 9, generator=g)
    w_eff = q(w)
    w_eff.retain_grad()
    torch.nn.functional.cross_entropy(x @ w_eff.T, torch.tensor([0, 1, 2, 3, 4])).backward()
    expected = torch.zeros(4).index_add_(0, indices[indices < 4].long(), w_eff.grad[indices < 4])
    assert torch.allclose(q.codebook.grad, expected, atol=1e-7)
    assert (w_eff[0, :3] == 0).all()


# ------------------------------------------------------------------------------ PQ, RQ


def test_product_quantization_error_falls_as_k_grows():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 16, generator=g)
    errs = []
    for bits in (1, 2, 3, 4, 5):
        param = Product().build(_layer(w, bits), ProductConfig(block_width=4))
        errs.append(((param(w) - w) ** 2).sum().item())
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False))
    # k = number of rows: every row is its own centroid, exact reconstruction
    param = Product().build(_layer(w, 6), ProductConfig(block_width=4))
    assert torch.allclose(param(w), w, atol=1e-6)


@pytest.mark.parametrize("width", [1, 4])
def test_residual_quantization_error_falls_as_k_and_t_grow(width):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, width, generator=g)

    def err(k, t):
        books, idx = residual_codebooks(x, k, t, seed=0)
        recon = books[torch.arange(t)[:, None], idx].sum(0)
        return ((recon - x) ** 2).sum().item()

    by_t = [err(4, t) for t in (1, 2, 3, 4)]
    by_k = [err(k, 2) for k in (2, 4, 8, 16)]
    assert all(a > b for a, b in zip(by_t, by_t[1:], strict=False))
    assert all(a > b for a, b in zip(by_k, by_k[1:], strict=False))
