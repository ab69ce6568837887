"""Diagonal curvature accumulators: exact Hessian, GGN, empirical Fisher, Hutchinson.

Each accumulator follows one protocol: ``update(x, y)`` adds a batch, ``reset()`` clears,
``result()`` returns ``{name: tensor}`` for the *mean* loss over every sample seen (each
batch weighted by its size). Feed them with :func:`brainsurgeon.curvature.collect`.

* :class:`ExactDiagonal`: ``H_qq`` of the mean loss by Hessian-vector products with unit
  vectors, batched over coordinate chunks (``P`` products: small nets only).
* :class:`GGNDiagonal`: ``diag(J^T H_out J)``, OBD's "Levenberg-Marquardt" approximation
  (LeCun, Denker & Solla 1989, "Optimal Brain Damage"), propagated exactly through the
  output-Hessian factor rather than by OBD's diagonal-only recursion; equals ``H_qq`` for
  piecewise-linear nets (ReLU, MaxPool) with cross entropy.
* :class:`GradientStats`: per-sample ``mean g``, ``mean |g|`` and the empirical Fisher
  ``F_qq = mean g_nq^2``.
* :class:`HutchinsonDiagonal`: ``E_v[v * Hv]`` with Rademacher ``v`` (unbiased, noisy).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import check_positive_int
from .backend import PerSampleBackend
from .layers import Targets, functional_model
from .outputs import LossFn, check_loss


def _wide(value: Tensor) -> Tensor:
    """Sums are kept in float64 (and read in the tensor's dtype), so the order in which
    batches or ranks are added changes nothing at the precision of the result."""
    value = value.detach()
    return value.double() if value.is_floating_point() else value


class Accumulator:
    """Base: ``sums_`` (per target, float64), ``count_`` (samples); ``result() = sums_ /
    count_`` in each target's dtype. Unnormalised sums + a count: the convention that
    :func:`brainsurgeon.distributed.reduce` merges exactly across ranks."""

    what = "curvature statistics"

    def __init__(self, model: nn.Module, targets: Targets, loss_fn: LossFn) -> None:
        self.model, self.targets, self.loss_fn = model, dict(targets), loss_fn
        self.reset()

    def reset(self) -> None:
        self.sums_: dict[str, Tensor] = {}
        self.count_ = 0

    def _add(self, name: str, value: Tensor) -> None:
        value = _wide(value)
        self.sums_[name] = self.sums_[name] + value if name in self.sums_ else value.clone()

    def _read(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        """``sums / count`` in each target's dtype."""
        n = max(self.count_, 1)
        out = {}
        for name, s in sums.items():
            module, tensor = self.targets[name]
            out[name] = (s / n).to(getattr(module, tensor).dtype)
        return out

    def update(self, x: Tensor, y: Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Tensor]:
        return self._read(self.sums_)


class GGNDiagonal(Accumulator):
    """Gauss-Newton diagonal ``mean_n sum_k (J_n^T s_nk)^2`` (``method="rules"|"autograd"``)."""

    what = "the Gauss-Newton diagonal"

    def __init__(self, model, targets, loss_fn, method: str = "rules") -> None:
        self.backend = PerSampleBackend(model, targets, loss_fn, method)
        super().__init__(model, targets, loss_fn)

    def update(self, x: Tensor, y: Tensor) -> None:
        sample = self.backend(x, y, grads=False, ggn=True, what=self.what)
        for name, h in sample.h.items():
            self._add(name, h.sum())
        self.count_ += sample.n


class GradientStats(Accumulator):
    """Per-sample gradient moments: ``result()`` is the Fisher diagonal ``mean g_n^2``;
    ``mean()`` is the mean gradient ``g``; ``abs_mean()`` is ``mean |g_n|``."""

    what = "per-sample gradients"

    def __init__(self, model, targets, loss_fn, method: str = "rules") -> None:
        self.backend = PerSampleBackend(model, targets, loss_fn, method)
        super().__init__(model, targets, loss_fn)

    def reset(self) -> None:
        super().reset()
        self.grad_sums_: dict[str, Tensor] = {}
        self.abs_sums_: dict[str, Tensor] = {}

    def update(self, x: Tensor, y: Tensor) -> None:
        sample = self.backend(x, y, grads=True, ggn=False, what=self.what)
        for name, g in sample.g.items():
            self._add(name, g.square().sum())
            s, a = _wide(g.sum()), _wide(g.abs().sum())
            self.grad_sums_[name] = self.grad_sums_.get(name, 0) + s
            self.abs_sums_[name] = self.abs_sums_.get(name, 0) + a
        self.count_ += sample.n

    def mean(self) -> dict[str, Tensor]:
        return self._read(self.grad_sums_)

    def abs_mean(self) -> dict[str, Tensor]:
        return self._read(self.abs_sums_)


class _FullBatch(Accumulator):
    """Shared by the Hessian-vector-product accumulators: loss of a batch as a function of
    leaf copies of the target tensors, and its gradient with a graph for double backward."""

    def _leaves_and_grad(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
        leaves = {
            n: getattr(m, t).detach().requires_grad_(True) for n, (m, t) in self.targets.items()
        }
        # the math attention kernel: the fused CPU ones have no double backward
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            logits = functional_call(functional_model(self.model), leaves, (x,))
            loss = check_loss(self.loss_fn(logits, y), self.what)
            grads = torch.autograd.grad(
                loss, list(leaves.values()), create_graph=True, allow_unused=True
            )
        flat = torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(grads, leaves.values(), strict=True)
            ]
        )
        return list(leaves.values()), flat

    def _hvp(self, leaves: list[Tensor], flat_grad: Tensor, vectors: Tensor) -> Tensor:
        """``H v`` for each row of ``vectors`` (k, P) -> (k, P)."""
        if not flat_grad.requires_grad:  # loss is linear in the targets
            return torch.zeros_like(vectors)
        hv = torch.autograd.grad(
            flat_grad, leaves, vectors, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        return torch.cat(
            [
                (
                    h if h is not None else torch.zeros(vectors.shape[0], *p.shape, device=p.device)
                ).reshape(vectors.shape[0], -1)
                for h, p in zip(hv, leaves, strict=True)
            ],
            dim=1,
        )

    def _unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        out, start = {}, 0
        for name, (m, t) in self.targets.items():
            shape = getattr(m, t).shape
            size = shape.numel()
            out[name] = flat[start : start + size].reshape(shape)
            start += size
        return out


class ExactDiagonal(_FullBatch):
    """Exact ``H_qq`` of the mean loss: ``e_q^T H e_q`` per coordinate, ``chunk`` at a time."""

    what = "the exact Hessian diagonal"

    def __init__(self, model, targets, loss_fn, chunk: int = 256) -> None:
        self.chunk = check_positive_int("chunk", chunk)
        super().__init__(model, targets, loss_fn)

    def update(self, x: Tensor, y: Tensor) -> None:
        leaves, flat = self._leaves_and_grad(x, y)
        P, diag = flat.numel(), torch.empty_like(flat)
        for start in range(0, P, self.chunk):
            idx = torch.arange(start, min(start + self.chunk, P), device=flat.device)
            basis = torch.zeros(idx.numel(), P, dtype=flat.dtype, device=flat.device)
            basis[torch.arange(idx.numel()), idx] = 1.0
            diag[idx] = self._hvp(leaves, flat, basis)[torch.arange(idx.numel()), idx]
        n = int(x.shape[0])
        for name, d in self._unflatten(diag * n).items():
            self._add(name, d)
        self.count_ += n


class HutchinsonDiagonal(_FullBatch):
    """``diag H ~ mean_p v_p * (H v_p)`` with ``probes`` Rademacher vectors per batch."""

    what = "the Hutchinson diagonal"

    def __init__(self, model, targets, loss_fn, probes: int = 20, seed: int = 0) -> None:
        self.probes = check_positive_int("probes", probes)
        self.seed = int(seed)
        super().__init__(model, targets, loss_fn)

    def reset(self) -> None:
        super().reset()
        self.generator = torch.Generator().manual_seed(self.seed)
        self.drawn_ = 0

    def _draw(self, size: int) -> Tensor:
        self.drawn_ += 1
        return torch.randint(0, 2, (self.probes, size), generator=self.generator)

    def seek(self, batch: int) -> None:
        """Skip to the probes of batch ``batch`` (a rank's shard starts mid-stream)."""
        size = sum(getattr(m, t).numel() for m, t in self.targets.values())
        while self.drawn_ < batch:
            self._draw(size)

    def update(self, x: Tensor, y: Tensor) -> None:
        leaves, flat = self._leaves_and_grad(x, y)
        v = self._draw(flat.numel())
        v = (v * 2 - 1).to(device=flat.device, dtype=flat.dtype)
        est = (v * self._hvp(leaves, flat, v)).mean(0)
        n = int(x.shape[0])
        for name, d in self._unflatten(est * n).items():
            self._add(name, d)
        self.count_ += n
