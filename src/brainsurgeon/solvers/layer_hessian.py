"""Shared pieces of the layer-wise solvers: the damped inverse of ``H = 2 X X^T / N`` and
argument checks for ``W`` (rows, cols), ``H`` (cols, cols), ``keep`` masks and targets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, NumericalError, check_fraction


def damped_inverse_cholesky(H: Tensor, damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """``(U, dead)``: upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1`` and dead inputs.

    ``H`` (cols, cols); ``U^T U = H^-1``. Inputs that never fire (``H_jj == 0``) get
    ``H_jj = 1`` so ``H`` stays invertible (their weights do not matter and are set to zero by
    the callers), as in the SparseGPT/GPTQ reference code.
    """
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ConfigError(f"H must be a square (cols, cols) matrix, got shape {tuple(H.shape)}")
    if not damp >= 0:
        raise ConfigError(f"damp must be >= 0 (a fraction of mean(diag H)), got {damp}")
    if not bool(torch.isfinite(H).all()):
        raise NumericalError(
            "the layer Hessian H = 2 X X^T / N holds NaN or infinite values; check the "
            "calibration inputs (normalisation) and the layers before this one"
        )
    H = H.clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * H.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(H)
    if bool(info):
        raise NumericalError(
            f"the layer Hessian H = 2 X X^T / N is not positive definite after damping "
            f"{damp:g} * mean(diag H); raise damp (e.g. damp=0.1) or give more calibration samples"
        )
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if bool(info):
        raise NumericalError(f"H^-1 lost positive definiteness in float; raise damp above {damp:g}")
    if not bool(torch.isfinite(U).all()):
        raise NumericalError(
            f"the inverse of the damped layer Hessian overflowed to NaN or inf; raise damp "
            f"above {damp:g} (e.g. damp=0.1)"
        )
    return U, dead


def as_work(W: Tensor, H: Tensor) -> tuple[Tensor, Tensor]:
    """A float (>= float32) working copy of ``W`` (rows, cols) and ``H`` (cols, cols) beside it."""
    if W.ndim != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ConfigError(
            f"expected W (rows, cols) and H (cols, cols), got W {tuple(W.shape)} and H "
            f"{tuple(H.shape)}; reshape conv weights to (out, in*kh*kw)"
        )
    dtype = torch.promote_types(W.dtype, torch.float32)
    return W.detach().to(dtype).clone(), H.detach().to(device=W.device, dtype=dtype)


def check_keep(keep: Tensor, W: Tensor) -> Tensor:
    """``keep`` (rows, cols) as a bool tensor on ``W``'s device (False = already pruned)."""
    if keep.shape != W.shape:
        raise ConfigError(f"keep mask shape {tuple(keep.shape)} != weight shape {tuple(W.shape)}")
    return keep.to(device=W.device, dtype=torch.bool)


def check_target(
    cols: int, sparsity: float | None, nm: tuple[int, int] | None
) -> tuple[float | None, tuple[int, int] | None]:
    """Validate one target: a sparsity in (0, 1), or ``nm=(N, M)`` with M dividing ``cols``."""
    if nm is not None:
        n, m = (int(v) for v in nm)
        if not 0 < n < m:
            raise ConfigError(f"N:M needs 0 < N < M, got {n}:{m}; e.g. nm=(2, 4)")
        if cols % m:
            raise ConfigError(
                f"N:M groups of {m} must tile the {cols} input columns; pick M dividing {cols}"
            )
        return None, (n, m)
    if sparsity is None:
        raise ConfigError("give a sparsity in (0, 1) or nm=(N, M)")
    return check_fraction("sparsity", sparsity), None
