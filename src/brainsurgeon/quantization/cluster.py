"""Lloyd's k-means as pure tensor functions, shared by kmeans, product and residual quantization.

``lloyd(x (n, d), init (k, d)) -> (centroids (k, d), labels (n,))`` alternates assignment to
the nearest centroid and the mean update until the labels stop changing (scikit-learn's
"strict convergence"); an empty cluster keeps its centroid. Inits for scalar weights follow
Han et al. (Deep Compression, 2016): linear, random, density; vectors use k-means++.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

CHUNK = 1 << 16  # rows per distance block when assigning vectors


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index ``(n,)`` of the nearest centroid for each row of ``x (n, d)``."""
    if x.shape[1] == 1:  # scalars: binary search between sorted centroid midpoints
        values, order = centroids[:, 0].sort()
        edges = (values[1:] + values[:-1]) / 2
        return order[torch.bucketize(x[:, 0], edges)]
    c2 = (centroids**2).sum(dim=1)
    out = [((c2 - 2 * chunk @ centroids.T).argmin(dim=1)) for chunk in x.split(CHUNK)]
    return torch.cat(out)


def lloyd(x: torch.Tensor, init: torch.Tensor, max_iter: int = 100):
    """Lloyd's algorithm from ``init``; returns ``(centroids (k, d), labels (n,))`` in x's dtype.

    Deterministic on CPU. On CUDA the cluster sums use ``index_add_``, whose atomic adds sum
    in a varying order: centroids can differ in the last bits between runs (the CLI records
    ``"determinism": {"deterministic": false, ...}`` in the run's config.json there).
    """
    if x.shape[1] == 1:
        c = _lloyd_1d(x[:, 0].double(), init[:, 0].double(), max_iter)[:, None]
        return c.to(x.dtype), assign(x.double(), c)
    xd, c = x.double(), init.double().clone()
    k = c.shape[0]
    labels = assign(xd, c)
    for _ in range(max_iter):
        counts = torch.bincount(labels, minlength=k).to(xd.dtype)
        sums = torch.zeros_like(c).index_add_(0, labels, xd)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        new = assign(xd, c)
        if torch.equal(new, labels):
            break
        labels = new
    return c.to(x.dtype), labels


def _lloyd_1d(values: torch.Tensor, c: torch.Tensor, max_iter: int) -> torch.Tensor:
    """Exact 1-D Lloyd on sorted values: clusters are runs between centroid midpoints, so an
    iteration costs ``O(k log n)`` with prefix sums. Returns the centroids ``(k,)``."""
    v = values.sort().values
    csum = torch.cat([v.new_zeros(1), v.cumsum(0)])
    bounds = None
    for _ in range(max_iter + 1):
        sorted_c, order = c.sort()
        edges = torch.searchsorted(v, (sorted_c[1:] + sorted_c[:-1]) / 2, right=True)
        edges = torch.cat([edges.new_zeros(1), edges, edges.new_full((1,), v.numel())])
        if bounds is not None and torch.equal(edges, bounds):
            break
        bounds = edges
        counts = (edges[1:] - edges[:-1]).to(v.dtype)
        sums = csum[edges[1:]] - csum[edges[:-1]]
        means = torch.where(counts > 0, sums / counts.clamp_min(1), sorted_c)
        c = torch.empty_like(c).scatter_(0, order, means)
    return c


def scalar_init(values: torch.Tensor, k: int, method: str, seed: int = 0) -> torch.Tensor:
    """``(k, 1)`` initial centroids for 1-D ``values``: linear, random or density (Han et al.).

    linear: evenly spaced in ``[min, max]``; random: ``k`` distinct weights drawn at random;
    density: evenly spaced on the CDF, i.e. the ``(i + 1/2) / k`` quantiles.
    """
    if method == "linear":
        lo, hi = float(values.min()), float(values.max())  # once per tensor
        c = torch.linspace(lo, hi, k, dtype=values.dtype, device=values.device)
    elif method == "random":
        g = torch.Generator().manual_seed(seed)
        c = values[torch.randperm(values.numel(), generator=g)[:k]]
    else:
        ranks = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * values.numel()).long()
        c = values.sort().values[ranks.clamp(max=values.numel() - 1)]
    return c.reshape(k, 1)


def kmeans_pp(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of ``(k, d)`` centroids from ``x (n, d)``."""
    from sklearn.cluster import kmeans_plusplus

    centers, _ = kmeans_plusplus(x.detach().double().cpu().numpy(), k, random_state=seed)
    return torch.from_numpy(np.ascontiguousarray(centers)).to(device=x.device, dtype=x.dtype)


def vector_kmeans(x: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = 100):
    """k-means++ then Lloyd on rows of ``x (n, d)``: ``(centroids (k, d), labels (n,))``."""
    return lloyd(x, kmeans_pp(x, k, seed), max_iter)


def layer_seed(seed: int, name: str) -> int:
    """A per-tensor seed that is stable across processes."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31
