"""The loss side: per-sample output gradients and a factor of the output Hessian.

``loss_fn(logits, y)`` is the batch *mean* of per-sample losses ``L_n`` (cross entropy,
MSE, ...). For sample ``n`` with logits ``z_n`` (C,):

* ``dL_n/dz_n`` (n, C), the vector backpropagated for per-sample gradients;
* ``S_n`` (C, K) with ``S_n S_n^T = d2L_n/dz_n^2``, so the Gauss-Newton matrix is
  ``sum_k (J_n^T s_nk)(J_n^T s_nk)^T``. For softmax cross entropy ``d2L/dz2 = diag(p) -
  p p^T`` and ``S = diag(sqrt p) - p sqrt(p)^T`` exactly; other losses use an eigen
  factorisation of the autograd Hessian with negative eigenvalues clipped to 0.

Each column of ``S`` costs one backward pass through the network. Above
:data:`MAX_OUTPUT_RANK` columns (a 384-dimensional sentence embedding), ``S`` is replaced by
the sketch ``S R / sqrt(k)`` with a Rademacher ``R`` (K, k), ``k = MAX_OUTPUT_RANK``: still
``E[S' S'^T] = S S^T``, so every Gauss-Newton statistic stays unbiased, with a variance that
shrinks as ``1/k``. The draws come from a generator seeded per call order (deterministic).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, NumericalError

LossFn = Callable[[Tensor, Tensor], Tensor]


def check_loss(loss: Tensor, what: str) -> Tensor:
    """The loss as a scalar; :class:`ConfigError` unless it is one scalar tensor (the batch
    mean), :class:`NumericalError` when it is NaN or infinite."""
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ConfigError(
            f"the loss returned {shape} while collecting {what}; a loss must return one "
            "scalar tensor, the batch mean (e.g. F.mse_loss(out, y), or .mean() at the end)"
        )
    loss = loss.reshape(())
    if not bool(torch.isfinite(loss).all()):
        raise NumericalError(
            f"the loss is {loss.detach().flatten()[0].item()} while collecting {what}; "
            "the model or the calibration data produce non-finite values "
            "(check the inputs' normalisation and the weights)"
        )
    return loss


def output_gradients(loss_fn: LossFn, z: Tensor, y: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """``(sum_n L_n, dL_n/dz_n (n, C))`` for the logits ``z`` (n, C)."""
    zd = z.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = check_loss(loss_fn(zd, y), what) * zd.shape[0]
        (grad,) = torch.autograd.grad(loss, zd)
    return loss.detach(), grad


def output_factor(loss_fn: LossFn, z: Tensor, y: Tensor) -> Tensor:
    """``S`` (n, C, K) with ``S_n S_n^T = d2 L_n / dz_n^2`` (positive semi-definite part)."""
    z = z.detach()
    if loss_fn is F.cross_entropy:
        p = torch.softmax(z, dim=1)
        sp = p.sqrt()
        return torch.diag_embed(sp) - p.unsqueeze(2) * sp.unsqueeze(1)

    # L_n depends on z_n only, so row c of every d2L_n/dz_n^2 comes from one backward pass.
    zd = z.requires_grad_(True)
    hess = torch.zeros(*z.shape, z.shape[1], dtype=z.dtype, device=z.device)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_fn(zd, y) * z.shape[0], zd, create_graph=True)
        for c in range(z.shape[1] if g.requires_grad else 0):
            (row,) = torch.autograd.grad(g[:, c].sum(), zd, retain_graph=True, allow_unused=True)
            if row is not None:
                hess[:, c] = row.detach()
    evals, evecs = torch.linalg.eigh(hess)
    return sketch(evecs * evals.clamp_min(0).sqrt().unsqueeze(1))


#: output-Hessian factors with more columns than this are sketched (see the module docstring)
MAX_OUTPUT_RANK = 64
_SKETCH = {"calls": 0}


def sketch(S: Tensor, k: int | None = None) -> Tensor:
    """``S`` (n, C, K) unchanged if ``K <= k``, else ``S R / sqrt(k)`` (n, C, k) with a
    Rademacher ``R``: an unbiased, ``k``-column stand-in for ``S S^T``."""
    k = MAX_OUTPUT_RANK if k is None else int(k)
    if S.shape[-1] <= k:
        return S
    g = torch.Generator().manual_seed(1_000_003 + _SKETCH["calls"])
    _SKETCH["calls"] += 1
    R = torch.randint(0, 2, (S.shape[-1], k), generator=g).to(S.dtype).mul_(2).sub_(1)
    return S @ R.to(S.device) / k**0.5
