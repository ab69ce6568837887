"""Inverse curvature for OBS, exact or block-diagonal (WoodFisher), with relative damping.

``H = lam I + C``, ``C = (1/N) sum_v v v^T`` over vectors ``v`` fed per sample: the
per-sample gradients ``g_n`` (``hessian="fisher"``, the empirical Fisher; Hassibi & Stork
1993) or the per-sample, per-output-factor vectors ``J_n^T s_nk`` with ``S_n S_n^T = d2L_n /
dz_n^2`` (``hessian="ggn"``, the Gauss-Newton matrix; the exact Hessian of a linear model
under MSE). ``H`` is never formed whole: each block's inverse comes from its Gram matrix, or,
with fewer vectors than the block size, from the Woodbury identity (the matrix form of the
recursion ``Hi <- Hi - Hi v v^T Hi / (N + v^T Hi v)`` started from ``I / lam``), see
:mod:`brainsurgeon.solvers.woodbury`.

Damping ``lam = rel_damp * mean(diag C) + damp``: the relative part scales with the
curvature, like SparseGPT's ``percdamp``; an absolute ``lam`` of 1e-5 swamps the Fisher of a
converged net (whose mean diagonal is far smaller) and turns OBS into magnitude pruning.

``block_size=None`` keeps one (P, P) block (exact); a block size of 100..2000 keeps the
diagonal blocks of each tensor (Singh & Alistarh 2020, "WoodFisher"), memory ``~P *
block_size``. :func:`choose_block_size` picks the exact inverse or the largest block that
fits a memory budget.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..distributed.group import active as parallel_active
from ..distributed.layers import by_owner
from ..errors import ConfigError, NumericalError, check_positive_int
from ..solvers import inverse_from_gram, inverse_from_vectors, obs_remove_set
from .backend import PerSampleBackend
from .layers import Targets
from .outputs import LossFn, check_loss, output_factor

HESSIANS = ("fisher", "ggn")
_TEMP_BYTES = 64 * 2**20  # blocks are inverted / solved this many bytes of (B, B) at a time
REL_DAMP = 0.1  # default lam / mean(diag C); measured in benchmarks/pruning_oneshot.py


def damping(damp: float | None, rel_damp: float | None) -> tuple[float, float]:
    """``(absolute, relative)`` damping: a part not given is 0, unless neither is given, then
    ``rel_damp = REL_DAMP``. Both must be >= 0 and not both 0."""
    if damp is None and rel_damp is None:
        rel_damp = REL_DAMP
    damp, rel_damp = float(damp or 0.0), float(rel_damp or 0.0)
    if not (damp >= 0 and rel_damp >= 0 and damp + rel_damp > 0):
        raise ConfigError(
            f"damping must be >= 0 and not all zero (the curvature is singular without it), "
            f"got damp={damp} (absolute) and rel_damp={rel_damp} (x mean diag); e.g. "
            f"rel_damp={REL_DAMP:g}"
        )
    return damp, rel_damp


class BlockLayout:
    """Coordinates of the flattened targets, grouped in blocks: ``index`` (blocks, B), -1 = pad.

    Exact (``block_size=None``): one block over every target. Otherwise each tensor is cut
    into consecutive blocks of ``block_size`` entries (the last one padded).
    """

    def __init__(self, shapes: dict[str, torch.Size], block_size: int | None) -> None:
        self.shapes = dict(shapes)
        self.total = sum(s.numel() for s in self.shapes.values())
        if block_size is None:
            self.block = self.total
            self.index = torch.arange(self.total).unsqueeze(0)
            return
        self.block = check_positive_int("block_size", block_size)
        rows, start = [], 0
        for shape in self.shapes.values():
            size = shape.numel()
            padded = math.ceil(size / self.block) * self.block
            idx = torch.full((padded,), -1, dtype=torch.long)
            idx[:size] = torch.arange(start, start + size)
            rows.append(idx.view(-1, self.block))
            start += size
        self.index = torch.cat(rows)

    @property
    def blocks(self) -> int:
        return self.index.shape[0]

    def gather(self, flat: Tensor) -> Tensor:
        """``flat`` (..., P) -> (..., blocks, B), zeros at padding (pad and view per tensor)."""
        if self.blocks == 1 and self.block == self.total:
            return flat.unsqueeze(-2)
        parts, start = [], 0
        for shape in self.shapes.values():
            size = shape.numel()
            pad = math.ceil(size / self.block) * self.block - size
            part = torch.nn.functional.pad(flat[..., start : start + size], (0, pad))
            parts.append(part.reshape(*flat.shape[:-1], -1, self.block))
            start += size
        return torch.cat(parts, dim=-2)

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        return torch.cat([tensors[name].reshape(-1) for name in self.shapes])

    def scatter(self, blocks: Tensor) -> dict[str, Tensor]:
        """(blocks, B) -> ``{name: tensor}`` (padding dropped)."""
        flat = blocks.new_zeros(self.total)
        index = self.index.to(blocks.device)
        valid = index >= 0
        flat[index[valid]] = blocks[valid]
        out, start = {}, 0
        for name, shape in self.shapes.items():
            out[name] = flat[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        return out

    def chunks(self, itemsize: int = 8) -> list[slice]:
        """Slices of blocks holding about ``_TEMP_BYTES`` of (B, B) matrices each."""
        step = max(1, _TEMP_BYTES // (self.block * self.block * itemsize))
        return [slice(b, min(b + step, self.blocks)) for b in range(0, self.blocks, step)]


class WoodburyInverse:
    """Block-diagonal ``(lam I + C)^-1`` from vectors fed by ``update``, ``n_samples`` known ahead.

    ``C = (1/N) sum_v v v^T`` with ``N = n_samples``; ``lam = rel_damp * mean(diag C) + damp``
    (defaults: :func:`damping`) is fixed when the inverse is read, after every vector.
    ``update(vectors (n, P))`` adds vectors (``per_sample`` > 1 when each sample brings
    several, as the GGN's output factors do); ``hinv_`` (blocks, B, B) is the fitted inverse;
    ``diagonal()`` and ``remove(weights, keep)`` (the multi-weight OBS update) read it.
    Strategy ``"woodbury"`` keeps the vectors (fewer than ``B`` in all: cheaper, ``O(n B^2)``
    per block); ``"direct"`` accumulates the Gram ``G^T G`` (``O(n B^2 + B^3)``); ``"auto"``
    picks by the number of vectors expected from the first update.
    """

    def __init__(
        self,
        layout: BlockLayout,
        n_samples: int,
        damp: float | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | None = None,
        strategy: str = "auto",
        *,
        rel_damp: float | None = None,
    ) -> None:
        if strategy not in ("auto", "woodbury", "direct"):
            raise ConfigError(f"strategy must be auto, woodbury or direct, got {strategy!r}")
        self.layout, self.dtype, self.device = layout, dtype, device
        self.damp, self.rel_damp = damping(damp, rel_damp)
        self.n_samples = check_positive_int("n_samples", n_samples)
        self.strategy = self._requested = strategy
        self.reset()

    def reset(self) -> None:
        self.strategy = self._requested
        self._gram: Tensor | None = None
        self._vectors: list[Tensor] = []
        self._hinv: Tensor | None = None
        self._complete = False
        self._sumsq = 0.0
        self.count_ = 0
        self.lam_: float | None = None

    def _resolve(self, per_sample: int) -> None:
        if self.strategy == "auto":
            expected = self.n_samples * per_sample
            self.strategy = "woodbury" if expected < self.layout.block else "direct"

    def update(self, vectors: Tensor, chunk: int = 64, per_sample: int = 1) -> None:
        """Add ``vectors`` (n, P), gathered into blocks ``chunk`` rows at a time;
        ``per_sample``: vectors each sample brings in all (for the ``"auto"`` strategy)."""
        n = int(vectors.shape[0])
        self._resolve(per_sample)
        self._sumsq += float(vectors.double().pow(2).sum())
        for start in range(0, n, chunk):
            g = self.layout.gather(vectors[start : start + chunk]).transpose(0, 1)
            if self.strategy == "woodbury":  # (blocks, k, B), kept in the vectors' precision
                self._vectors.append(g.contiguous())
                continue
            if self._gram is None:
                shape = (g.shape[0], g.shape[2], g.shape[2])
                self._gram = torch.zeros(shape, dtype=g.dtype, device=g.device)
            self._gram.baddbmm_(g.transpose(1, 2), g)
        self._hinv, self.count_ = None, self.count_ + n

    def mean_diagonal(self) -> float:
        """``mean(diag C) = sum_v ||v||^2 / (N P)``."""
        return self._sumsq / (self.n_samples * self.layout.total)

    def _lambda(self) -> float:
        lam = self.rel_damp * self.mean_diagonal() + self.damp
        if not lam > 0:
            raise NumericalError(
                "the curvature is zero (every per-sample gradient vanished), so relative "
                "damping gives lam = 0; set an absolute damping (obs option abs_damp=1e-8)"
            )
        return lam

    def _own_inverse(self) -> Tensor:
        """The block inverses; under ``torch.distributed`` only this rank's chunks of blocks
        are filled (the others are never needed here: :meth:`diagonal` and :meth:`remove`
        work chunk by chunk on the same owners and broadcast their small results)."""
        if self._hinv is not None:
            return self._hinv
        lam, n = self._lambda(), self.n_samples
        B = self.layout.block
        out = torch.zeros(self.layout.blocks, B, B, dtype=self.dtype, device=self.device)

        def invert(sl: slice) -> Tensor:
            if self.strategy == "woodbury" and self._vectors:
                G = torch.cat([v[sl] for v in self._vectors], dim=1).to(self.dtype)
                return inverse_from_vectors(G, n, lam)
            if self._gram is not None:
                return inverse_from_gram(self._gram[sl].to(self.dtype), n, lam)
            return torch.eye(B, dtype=self.dtype, device=self.device) / lam  # no vectors yet

        by_owner(out, self.layout.chunks(), invert, "the WoodFisher block inverses", share=False)
        self._hinv, self._complete, self.lam_ = out, not parallel_active(), lam
        return out

    @property
    def hinv_(self) -> Tensor:
        """Every block inverse (blocks, B, B) on every rank (broadcast from their owners)."""
        out = self._own_inverse()
        if not self._complete:
            by_owner(out, self.layout.chunks(), lambda sl: out[sl], "the WoodFisher inverses")
            self._complete = True
        return out

    def diagonal(self) -> dict[str, Tensor]:
        own = self._own_inverse()
        diag = torch.empty(own.shape[:2], dtype=own.dtype, device=own.device)
        by_owner(diag, self.layout.chunks(), lambda sl: own[sl].diagonal(dim1=1, dim2=2),
                 "the WoodFisher inverse diagonal")  # fmt: skip
        return self.layout.scatter(diag)

    def remove(self, weights: dict[str, Tensor], keep: dict[str, Tensor]) -> dict[str, Tensor]:
        """OBS for the set ``~keep`` in every block: ``w - Hi[:, Q] (Hi[Q, Q])^-1 w_Q``."""
        hinv = self._own_inverse()  # each chunk is updated by the rank that inverted it
        w = self.layout.gather(self.layout.flatten(weights).to(self.dtype))
        q = self.layout.gather(~self.layout.flatten(keep).to(torch.bool))
        q = q & (self.layout.index.to(q.device) >= 0)
        new = torch.empty_like(w)
        by_owner(
            new,
            self.layout.chunks(),
            lambda sl: obs_remove_set(w[sl], hinv[sl], q[sl]),
            "the OBS weight update",
        )
        return self.layout.scatter(new)


def inverse_bytes(total: int, block_size: int | None, itemsize: int = 8) -> int:
    """Memory of the inverse: ``P^2`` exact, ``P * B`` blocked (ignoring padding)."""
    return total * (total if block_size is None else block_size) * itemsize


def fit_bytes(shapes: dict[str, torch.Size], block_size: int | None) -> int:
    """Peak memory of fitting and using the inverse with ``block_size`` (None = exact).

    The float64 inverse (padding included), the statistics beside it (a float32 Gram, or
    fewer than ``B`` float32 vectors per block: at most ``B^2 * 4`` per block) and three
    (B, B) float64 work matrices per chunk of blocks being inverted or solved.
    """
    layout_total = sum(s.numel() for s in shapes.values())
    if block_size is None:
        blocks, B = 1, layout_total
    else:
        B = int(block_size)
        blocks = sum(math.ceil(s.numel() / B) for s in shapes.values())
    per_block = B * B
    chunk = min(blocks, max(1, _TEMP_BYTES // (per_block * 8)))
    return blocks * per_block * (8 + 4) + 3 * chunk * per_block * 8


def choose_block_size(shapes: dict[str, torch.Size], max_memory: int) -> int | None:
    """The exact inverse (None) if it fits ``max_memory`` bytes, else the largest block size.

    Blocks never exceed the largest tensor (a tensor smaller than ``B`` would be padded).
    Raises :class:`ConfigError` when not even blocks of 1 fit.
    """
    if fit_bytes(shapes, None) <= max_memory:
        return None
    hi = max(s.numel() for s in shapes.values())
    if fit_bytes(shapes, 1) > max_memory:
        total = sum(s.numel() for s in shapes.values())
        raise ConfigError(
            f"max_memory={max_memory:,} bytes cannot hold even a diagonal inverse of {total:,} "
            f"weights ({fit_bytes(shapes, 1):,} bytes); raise max_memory or prune fewer layers"
        )
    lo = 1  # fit_bytes grows with B up to padding effects: bisect, then step down to a fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fit_bytes(shapes, mid) <= max_memory else (lo, mid - 1)
    while fit_bytes(shapes, lo) > max_memory:
        lo -= 1
    return lo


def _linear_loss(z: Tensor, s: Tensor) -> Tensor:
    """``mean_n s_n . z_n``: its per-sample gradient is ``J_n^T s_n``."""
    return (z * s).sum() / z.shape[0]


class InverseFisher:
    """Accumulator: per-sample curvature vectors of the targets -> :class:`WoodburyInverse`.

    ``hessian="fisher"``: the per-sample gradients ``g_n``; ``"ggn"``: the ``K`` vectors
    ``J_n^T s_nk`` per sample (one backward pass each), without the columns that carry less
    than ``ggn_tol`` of the sample's output-Hessian trace (a confident softmax has few).
    ``damp`` is absolute, ``rel_damp`` a fraction of ``mean(diag C)``; see :func:`damping`.
    """

    what = "the inverse curvature"

    def __init__(
        self,
        model,
        targets: Targets,
        loss_fn: LossFn,
        n_samples: int,
        damp: float | None = None,
        block_size: int | None = None,
        method: str = "rules",
        chunk_size: int = 256,
        *,
        rel_damp: float | None = None,
        hessian: str = "fisher",
        ggn_tol: float = 0.0,
    ) -> None:
        if hessian not in HESSIANS:
            raise ConfigError(f"hessian must be one of {list(HESSIANS)}, got {hessian!r}")
        if not 0 <= ggn_tol < 1:
            raise ConfigError(f"ggn_tol must lie in [0, 1) (0 = exact GGN), got {ggn_tol}")
        self.hessian, self.model, self.loss_fn = hessian, model, loss_fn
        self.ggn_tol = float(ggn_tol)
        self.backend = PerSampleBackend(
            model, targets, loss_fn if hessian == "fisher" else _linear_loss, method
        )
        shapes = {name: getattr(m, t).shape for name, (m, t) in targets.items()}
        device = next(iter(getattr(m, t) for m, t in targets.values())).device
        self.layout = BlockLayout(shapes, block_size)
        self.inverse = WoodburyInverse(
            self.layout, n_samples, damp, device=device, rel_damp=rel_damp
        )
        self.chunk_size = check_positive_int("chunk_size", chunk_size)

    def reset(self) -> None:
        self.inverse.reset()

    def _flat(self, x: Tensor, y: Tensor) -> Tensor:
        sample = self.backend(x, y, grads=True, what=self.what)
        parts = [sample.g[name].dense().g.reshape(sample.n, -1) for name in self.layout.shapes]
        return torch.cat(parts, dim=1)

    def _update_ggn(self, x: Tensor, y: Tensor) -> None:
        """Feed ``J_n^T s_nk`` (n, P) for each factor column ``k`` in turn, leaving out the
        columns with ``||s_nk||^2 < ggn_tol * sum_k ||s_nk||^2`` (sample n's output trace)."""
        with torch.no_grad():
            z = self.model(x)
            check_loss(self.loss_fn(z, y), self.what)
        factor = output_factor(self.loss_fn, z, y)  # (n, C, K)
        norms = factor.pow(2).sum(1)  # (n, K)
        keep = norms >= self.ggn_tol * norms.sum(1, keepdim=True)
        per_sample = max(1, math.ceil(int(keep.sum()) / max(len(x), 1)))
        for k in range(factor.shape[2]):
            rows = keep[:, k]
            if bool(rows.any()):
                vectors = self._flat(x[rows], factor[rows, :, k])
                self.inverse.update(vectors, per_sample=per_sample)

    def update(self, x: Tensor, y: Tensor) -> None:
        from ..memory import chunk

        size = chunk(16 * self.layout.total, self.chunk_size, what="per-sample gradients (obs)")
        for start in range(0, int(x.shape[0]), size):
            xs, ys = x[start : start + size], y[start : start + size]
            if self.hessian == "fisher":
                self.inverse.update(self._flat(xs, ys))
            else:
                self._update_ggn(xs, ys)

    def result(self) -> WoodburyInverse:
        return self.inverse
