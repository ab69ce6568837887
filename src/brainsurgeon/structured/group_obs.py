"""Structured layer-wise OBS on a group's consumers: pure functions of input Hessians.

For a consumer Linear ``y = W x (+ b)`` with calibration inputs ``X`` (N, in) the layer-wise
objective is ``E(W') = ||X W'^T - X W^T||_F^2 = 0.5 tr(dW H dW^T)``, ``H = 2 X^T X`` (damped:
``+ damp * mean(diag H) * I``). With ``bias=True`` a constant input 1 is appended, so the bias
takes part in the fit (``H`` is (in+1, in+1)). Removing the input set ``S`` (the removed units'
columns; everything else kept) at least cost, per output row ``w_r``, is the OBS block
formula (Hassibi & Stork 1993; structured, as in OBC, Frantar & Alistarh 2022):

* cost ``E_S = 0.5 sum_r w_rS ([H^-1]_SS)^-1 w_rS^T``; for one unit of one index
  ``0.5 sum_r W[r, u]^2 / [H^-1]_uu``;
* update ``dW = -W[:, S] ([H^-1]_SS)^-1 [H^-1]_{S, :}``, which zeroes ``W[:, S]`` and makes
  the kept columns the least-squares fit ``argmin_W' ||X_K W'^T - X W^T||`` (ridge ``damp``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError, NumericalError, UnsupportedLayerError
from ..models.adapters.rows import real_rows
from ..state import original
from .groups import Group, Slice


def _linear_consumer(model: nn.Module, s: Slice) -> nn.Linear:
    module = model.get_submodule(s.module)
    if not isinstance(module, nn.Linear) or s.tensor != "weight" or s.axis != 1:
        raise UnsupportedLayerError(
            f"group-obs needs Linear consumers read through weight axis 1; {s.module} is "
            f"{type(module).__name__} ({s.tensor} axis {s.axis})"
        )
    return module


class InputHessians:
    """``H = 2 X^T X`` (float64) of every consumer's input, ``[X, 1]`` with ``bias``.
    ``update(model, x)`` runs one forward; ``hessians_`` maps consumer name -> H."""

    def __init__(self, model: nn.Module, group: Group, *, bias: bool = True) -> None:
        if not group.consumers:
            raise ConfigError(f"group-obs needs the consumers of {group.name}; it lists none")
        self.group, self.bias = group, bias
        self.hessians_: dict[str, Tensor] = {}
        for s in group.consumers:
            lin = _linear_consumer(model, s)
            size = lin.in_features + int(bias and lin.bias is not None)
            self.hessians_[s.module] = torch.zeros(size, size, dtype=torch.float64)
        self.count_ = 0

    def update(self, model: nn.Module, x: Tensor) -> None:
        handles = []
        for name, h in self.hessians_.items():
            module = model.get_submodule(name)

            def hook(mod, args, h=h):
                rows = real_rows(args[0].detach()).double()  # a text batch: no padding
                if h.shape[0] > rows.shape[1]:
                    rows = torch.cat([rows, torch.ones_like(rows[:, :1])], 1)
                h += 2.0 * (rows.T @ rows).cpu()

            handles.append(module.register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                model(x)
        finally:
            for handle in handles:
                handle.remove()
        self.count_ += x.shape[0]


def damped_inverse(h: Tensor, damp: float) -> Tensor:
    """``(H + damp * mean(diag H) * I)^-1`` by Cholesky; a teaching error if not definite."""
    scale = float(h.diagonal().mean()) or 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    chol, info = torch.linalg.cholesky_ex(h + damp * scale * eye)
    if int(info) != 0:
        raise NumericalError(
            f"the consumer input Hessian is not positive definite (damp={damp}); "
            "raise damp (e.g. 0.01) or use more calibration samples"
        )
    return torch.cholesky_inverse(chol)


def weight_matrix(model: nn.Module, name: str, with_bias: bool) -> Tensor:
    """The consumer's effective ``[W, b]`` (out, in[+1]) in float64 (masks applied)."""
    module = model.get_submodule(name)
    w = module.weight.detach().double()
    if with_bias:
        w = torch.cat([w, module.bias.detach().double()[:, None]], 1)
    return w


def unit_costs(w: Tensor, h_inv: Tensor, s: Slice, units: int) -> Tensor:
    """Single-unit costs ``0.5 sum_r w_rS ([H^-1]_SS)^-1 w_rS^T`` (U,) for every unit."""
    idx = s.indices(torch.arange(units)).view(units, s.unit_size)
    blocks = h_inv[idx[:, :, None], idx[:, None, :]]  # (U, k, k)
    wu = w[:, idx].permute(1, 0, 2)  # (U, out, k)
    sol = torch.linalg.solve(blocks, wu.transpose(1, 2))  # (U, k, out)
    return 0.5 * (wu.transpose(1, 2) * sol).sum((1, 2))


def removal_update(w: Tensor, h_inv: Tensor, removed: Tensor) -> Tensor:
    """``W - W[:, S] ([H^-1]_SS)^-1 [H^-1]_{S,:}`` with ``W[:, S]`` exactly 0 (S: indices)."""
    if removed.numel() == 0:
        return w.clone()
    block = h_inv[removed[:, None], removed[None, :]]
    new = w - torch.linalg.solve(block, w[:, removed].T).T @ h_inv[removed, :]
    new[:, removed] = 0.0
    return new


def removed_indices(s: Slice, keep: Tensor) -> Tensor:
    """Consumer input indices of the units ``keep`` (bool (U,)) marks as removed."""
    return s.indices(torch.nonzero(~keep.cpu()).reshape(-1))


def write_compensation(
    model: nn.Module, group: Group, keep: Tensor, stats: InputHessians, damp: float
) -> dict[str, Tensor]:
    """Apply the OBS update for the removed units to every consumer's weight (and bias with
    ``stats.bias``) in place; returns the new ``{consumer.weight: W}`` values."""
    if keep.shape != (group.units,) or keep.dtype != torch.bool:
        raise ConfigError(
            f"keep must be a bool tensor of shape ({group.units},) for {group.name}, "
            f"got {keep.dtype} {tuple(keep.shape)}"
        )
    out = {}
    for s in group.consumers:
        h = stats.hessians_[s.module]
        module = model.get_submodule(s.module)
        with_bias = h.shape[0] > module.in_features
        new = removal_update(
            weight_matrix(model, s.module, with_bias),
            damped_inverse(h, damp),
            removed_indices(s, keep),
        )
        weight = original(module, "weight")
        with torch.no_grad():
            weight.copy_(new[:, : module.in_features].to(weight.dtype))
            if with_bias:
                bias = original(module, "bias")
                bias.copy_(new[:, -1].to(bias.dtype))
        out[f"{s.module}.weight"] = weight.detach().clone()
    return out
