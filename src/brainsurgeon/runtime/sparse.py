"""``SparseLinear``: a Linear layer whose weight lives in CSR, for pruned models at inference.

``y = x W^T + b`` with ``W`` (out, in) stored as three buffers: ``crow_indices`` (out + 1,),
``col_indices`` (nnz,) (int32 while nnz < 2**31) and ``values`` (nnz,), i.e.
``4 (out + 1) + (4 + 4) nnz`` bytes in float32 against ``4 out in`` dense: smaller whenever
density < ~0.5. The kernel is chosen per call from the number of rows of ``x``, both reading
the same buffers (no copy):

* one row (batch 1) on CPU: scipy's CSR mat-vec on zero-copy numpy views;
* more rows, or a GPU: ``torch.sparse.mm`` (MKL on CPU) on an int32 CSR tensor.

When it pays, measured on this project's shared 2-core x86 machine with one torch thread
(``benchmarks/sparse_runtime.py`` -> ``benchmarks/results/sparse_runtime.json``; speedup =
dense ``nn.Linear`` / ``SparseLinear``):

* 4096 x 4096: wins from ~0.8 sparsity at batch 1 (~2.5x at 0.9, ~10x at 0.98) and from
  ~0.6 at batch 64 (~3.6x at 0.9, 11-18x at 0.98);
* 784 -> 300 (LeNet-300-100's first layer): breaks even at 0.9 and wins from ~0.95 at batch
  1 (1.5x); wins from ~0.8 at batch 64 (1.7x at 0.9);
* 300 -> 100: never at batch 1 (0.8x at 0.98); only at ~0.98 at batch 64, at noise level.

Large layers are memory-bound at batch 1, so fewer bytes is faster; on layers of ~30k
weights the fixed per-call cost (~10 us of Python and dispatch) exceeds the dense GEMV.
Candidates that never beat CSR: COO ``sparse.mm`` (10-20x slower) and BSR 4x4
(unstructured zeros fill the blocks; slower than dense); int64-index CSR is ~20% slower than
int32, and scipy at more than one row is 2-3x slower than torch's CSR. Memory is
below dense once density < ~0.5 (at 90% sparsity: ~20% of dense).

Inference only: no gradients flow through ``forward`` (it reads ``x.detach()``).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torch import nn

_INT32_MAX = 2**31 - 1


class _Views(NamedTuple):
    """What the kernels read, all sharing memory with the buffers."""

    csr: torch.Tensor  # torch sparse CSR (out, in)
    scipy: Any  # scipy.sparse.csr_matrix (out, in), or None off CPU / for other dtypes
    bias: Any  # numpy view of the bias for the scipy path, or None


class SparseLinear(nn.Module):
    """``(*, in_features) -> (*, out_features)``, ``y = x W^T + b`` with ``W`` in CSR.

    Build it with :meth:`from_dense`. ``nbytes()`` is the memory really held.
    """

    def __init__(
        self,
        crow_indices: torch.Tensor,
        col_indices: torch.Tensor,
        values: torch.Tensor,
        shape: tuple[int, int],
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = (int(n) for n in shape)
        _check_csr(crow_indices, col_indices, values, (self.out_features, self.in_features))
        self.register_buffer("crow_indices", crow_indices)
        self.register_buffer("col_indices", col_indices)
        self.register_buffer("values", values)
        self.register_buffer("bias", bias)
        self._views: _Views | None = None

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> SparseLinear:
        """The CSR form of ``linear.weight`` (exact zeros dropped) and a copy of its bias."""
        weight = linear.weight.detach()
        if weight.dim() != 2:
            raise TypeError(f"from_dense needs a 2-D weight, got shape {tuple(weight.shape)}")
        csr = _quiet(lambda: weight.to_sparse_csr())
        small = max(csr.values().numel(), weight.shape[1]) <= _INT32_MAX
        index = torch.int32 if small else torch.int64
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(
            csr.crow_indices().to(index),
            csr.col_indices().to(index),
            csr.values().clone(),
            tuple(weight.shape),
            bias,
        )

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        """Nonzeros / (out * in)."""
        return self.nnz / max(1, self.out_features * self.in_features)

    def nbytes(self) -> int:
        """Bytes held by the CSR buffers and the bias."""
        held = [self.crow_indices, self.col_indices, self.values, self.bias]
        return sum(t.numel() * t.element_size() for t in held if t is not None)

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight as a dense tensor (for checks and export)."""
        return self._csr().to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = self._views if self._views is not None else self._cached()
        if x.shape[-1] != self.in_features or x.dtype != views.csr.dtype:
            self._reject(x)
        x = x.detach()  # inference only; also lets numpy read it
        if views.scipy is not None and x.numel() == self.in_features:
            y = views.scipy @ x.numpy().reshape(-1)  # scipy CSR mat-vec, (out,)
            if views.bias is not None:
                y += views.bias
            return torch.from_numpy(y.reshape((*x.shape[:-1], self.out_features)))
        rows = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(views.csr, rows.t()).t().contiguous()  # (N, out)
        if self.bias is not None:
            y += self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, nnz={self.nnz}, density={self.density:.4f}"
        )

    def _reject(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"SparseLinear expects inputs of shape (*, {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        raise TypeError(
            f"SparseLinear holds {self.values.dtype} weights but got a {x.dtype} input; "
            f"cast the input (x.to({self.values.dtype})) or the layer (layer.to(x.dtype))"
        )

    def _csr(self) -> torch.Tensor:
        return self._cached().csr

    def _scipy(self) -> Any:
        return self._cached().scipy

    def _cached(self) -> _Views:
        """Kernel views of the buffers, built once (dropped by ``.to()``/``.half()``/...:
        see ``_apply``; in-place copies such as ``load_state_dict`` keep them valid)."""
        if self._views is None:
            shape = (self.out_features, self.in_features)
            parts = (self.crow_indices, self.col_indices, self.values)
            csr = _quiet(lambda: torch.sparse_csr_tensor(*parts, shape, check_invariants=False))
            numpy_ok = self.values.is_cpu and self.values.dtype in (torch.float32, torch.float64)
            scipy = _scipy_view(*parts, shape) if numpy_ok else None
            bias = self.bias.numpy() if numpy_ok and self.bias is not None else None
            self._views = _Views(csr, scipy, bias)
        return self._views

    def _apply(self, fn: Any, recurse: bool = True) -> SparseLinear:
        self._views = None  # buffers are about to be replaced
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_views"] = None  # views would be copied apart from the buffers they share
        return state


def _scipy_view(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> Any:
    """A scipy CSR matrix sharing memory with the three tensors (no copy)."""
    from scipy import sparse

    parts = (values.numpy(), col.numpy(), crow.numpy())
    return sparse.csr_matrix(parts, shape=shape, copy=False)


def _check_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> None:
    """Validate CSR buffers once so the kernels can skip the checks."""
    out_features, in_features = shape
    if crow.shape != (out_features + 1,) or col.shape != values.shape or values.dim() != 1:
        raise ValueError(
            f"CSR buffers do not fit a {shape} weight: crow_indices {tuple(crow.shape)} "
            f"(expected ({out_features + 1},)), col_indices {tuple(col.shape)}, values "
            f"{tuple(values.shape)} (both (nnz,)); build the layer with SparseLinear.from_dense"
        )
    if crow.dtype != col.dtype or crow.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"CSR indices must share int32 or int64, got {crow.dtype} and {col.dtype}")
    try:
        _quiet(lambda: torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=True))
    except RuntimeError as err:
        raise ValueError(f"invalid CSR buffers for a {shape} weight: {err}") from None


def _quiet(fn: Any) -> Any:
    """Run ``fn`` without torch's 'sparse CSR support is in beta' warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn()
