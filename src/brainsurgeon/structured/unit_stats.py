"""Statistics of a group's units over calibration data, collected once; the criteria in
:mod:`brainsurgeon.structured.scores` are pure functions of them.

A unit's **activation** is what its consumers read: a consumer module's input restricted to
``Slice.indices(units)`` along the feature dim (the last dim of a Linear input (N, ..., in),
dim 1 of a conv input (N, C, H, W)). Removing unit ``u`` means every consumer reads 0 there.

Everything derivative-based goes through a per-sample **gate** ``s`` (N, U), all ones, that
multiplies each consumer's input at the unit's indices: ``a -> s_nu * a``. Zeroing unit
``u`` for sample ``n`` is ``s_nu: 1 -> 0``, so, with ``L_n`` the per-sample loss,

* ``dL_n/ds_nu = sum_{i in u, positions} a_ni * dL_n/da_ni`` (``= g_n . a_n`` of the unit, every
  consumer summed): the first-order term, one backward pass for all units and samples;
* ``d2L_n/ds_nu^2 = a_nu^T H_n a_nu`` on the unit's block of the activation Hessian; with the
  Gauss-Newton ``H_n = J_n^T (d2L_n/dz^2) J_n`` (``z`` the model output) it is
  ``sum_cd J_ncu Lzz_ncd J_ndu`` with ``J_ncu = dz_nc/ds_nu``: one backward per output.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..errors import ConfigError, UnsupportedLayerError
from ..losses import LossFn, checked
from ..models.adapters import layer_kind
from ..models.adapters.rows import real_positions
from .groups import Group, Slice

#: consumer module class -> (feature dim of its input, weight axis that reads the features)
FEATURE_DIM: dict[type[nn.Module], tuple[int, int]] = {
    nn.Linear: (-1, 1),
    nn.Conv1d: (1, 1),
    nn.Conv2d: (1, 1),
    nn.Conv3d: (1, 1),
}


def feature_dim(module: nn.Module, s: Slice) -> int:
    """The input dim where ``module`` reads ``s``'s units; a clear error where unsupported."""
    rule = next((r for cls, r in FEATURE_DIM.items() if isinstance(module, cls)), None)
    if rule is None or s.tensor != "weight" or s.axis != rule[1]:
        raise UnsupportedLayerError(
            f"consumer {s.module} ({layer_kind(module)}, {s.tensor} axis {s.axis}) is not "
            f"supported by activation-based unit criteria; supported: "
            f"{', '.join(c.__name__ for c in FEATURE_DIM)} reading weight axis 1"
        )
    if getattr(module, "groups", 1) != 1:
        raise UnsupportedLayerError(f"consumer {s.module} is a grouped convolution; not supported")
    return rule[0]


def _check_consumers(group: Group) -> None:
    if not group.consumers:
        raise ConfigError(
            f"group {group.name} lists no consumers, so its activations are unknown; "
            "activation-based criteria need the modules that read the units (or use l1/l2)"
        )


def _spread(values: Tensor, x: Tensor, dim: int, s: Slice) -> Tensor:
    """Per-unit ``values`` (N, U) as a multiplier broadcastable against input ``x``: ones
    outside the slice, ``values[:, u]`` on unit ``u``'s indices along ``dim``."""
    units = values.shape[1]
    idx = s.indices(torch.arange(units, device=x.device))
    size = x.shape[dim]
    full = torch.ones(x.shape[0], size, dtype=x.dtype, device=x.device)
    full = full.index_copy(1, idx, values.to(x.dtype).repeat_interleave(s.unit_size, dim=1))
    shape = [1] * x.dim()
    shape[0], shape[dim] = x.shape[0], size
    return full.view(shape)


@contextmanager
def gated(model: nn.Module, group: Group, gate: Tensor) -> Iterator[None]:
    """Within the block, every consumer of ``group`` reads ``gate[n, u] * a`` (gate (N, U),
    or (U,) shared by all samples)."""
    _check_consumers(group)
    handles = []
    for s in group.consumers:
        module = model.get_submodule(s.module)
        dim = feature_dim(module, s)

        def hook(mod, args, s=s, dim=dim):
            x = args[0]
            g = gate.expand(x.shape[0], -1) if gate.dim() == 1 else gate
            return (x * _spread(g, x, dim, s), *args[1:])

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def unit_view(x: Tensor, dim: int, s: Slice, units: int) -> Tensor:
    """Input ``x`` rearranged to (N, U, entries of the unit: its indices x positions)."""
    idx = s.indices(torch.arange(units, device=x.device))
    picked = x.movedim(dim, 1).index_select(1, idx)  # (N, U * unit_size, ...)
    return picked.reshape(x.shape[0], units, -1)


class ActivationStats:
    """Per unit: mean ``|a|`` and the fraction of exact zeros (APoZ, Hu et al. 2016) over
    samples, the unit's indices, positions and consumers. ``update(model, x)``."""

    def __init__(self, group: Group) -> None:
        _check_consumers(group)
        self.group = group
        self.abs_sum_ = torch.zeros(group.units, dtype=torch.float64)
        self.zeros_ = torch.zeros(group.units, dtype=torch.float64)
        self.count_ = 0  # entries seen per unit (samples x indices x positions x consumers)

    def update(self, model: nn.Module, x: Tensor) -> None:
        handles = []
        for s in self.group.consumers:
            module = model.get_submodule(s.module)
            dim = feature_dim(module, s)

            def hook(mod, args, s=s, dim=dim):
                x, d = real_positions(args[0].detach(), dim)  # a text batch: no padding
                a = unit_view(x, d, s, self.group.units).double()
                self.abs_sum_ += a.abs().sum((0, 2)).cpu()
                self.zeros_ += (a == 0).sum((0, 2)).cpu().double()
                self.count_ += a.shape[0] * a.shape[2]

            handles.append(module.register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()

    def mean_abs(self) -> Tensor:
        """``mean |a|`` per unit (U,)."""
        return self.abs_sum_ / max(self.count_, 1)

    def apoz(self) -> Tensor:
        """Fraction of exact zeros per unit (U,)."""
        return self.zeros_ / max(self.count_, 1)


def _loss_hessian(z: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
    """Per-sample ``d2 L_n / dz_n^2`` (N, C, C) of ``L_n = N * loss_fn(z, y)`` (batch mean)."""
    z = z.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(z.shape[0] * loss_fn(z, y), z, create_graph=True)
    out = torch.zeros(z.shape[0], z.shape[1], z.shape[1], dtype=z.dtype, device=z.device)
    if not grad.requires_grad:  # the loss is linear in z (e.g. l1): no curvature
        return out
    for c in range(z.shape[1]):
        (row,) = torch.autograd.grad(grad[:, c].sum(), z, retain_graph=True, allow_unused=True)
        if row is not None:
            out[:, c] = row
    return out


class GateDamage:
    """Per-sample gate derivatives of one group, reduced as they stream in.

    Per batch: ``g_nu = dL_n/ds_nu`` and, with ``second_order``, the Gauss-Newton
    ``h_nu = d2L_n/ds_nu^2``; the per-sample damage ``d_nu = -g_nu + 0.5 h_nu`` (second-order
    Taylor of ``L_n(s_u = 0) - L_n(s = 1)``). Keeps the mean ``|g_nu|`` (Taylor) and Welford
    mean / variance of ``d_nu``: O(units) memory. ``update(model, x, y)``.
    """

    def __init__(self, group: Group, loss_fn: LossFn, *, second_order: bool = True) -> None:
        _check_consumers(group)
        self.group, self.loss_fn, self.second_order = group, loss_fn, second_order
        zeros = torch.zeros(group.units, dtype=torch.float64)
        self.abs_g_, self.sum_g_ = zeros.clone(), zeros.clone()
        self.mean_, self.m2_ = zeros.clone(), zeros.clone()
        self.n_ = 0

    def per_sample(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(g, h)``, each (N, U); ``h`` is zeros without ``second_order``."""
        p = next(model.parameters())
        gate = torch.ones(x.shape[0], self.group.units, dtype=p.dtype, device=p.device)
        gate.requires_grad_(True)
        with gated(model, self.group, gate):
            z = model(x)
        zf = z.reshape(z.shape[0], -1)
        loss = checked(self.loss_fn, z, y, "the calibration data") * z.shape[0]
        (g,) = torch.autograd.grad(loss, gate, retain_graph=self.second_order)
        h = torch.zeros_like(g)
        if self.second_order:
            lzz = _loss_hessian(z, y, self.loss_fn).reshape(z.shape[0], zf.shape[1], -1)
            jac = torch.stack(
                [
                    torch.autograd.grad(zf[:, c].sum(), gate, retain_graph=True)[0]
                    for c in range(zf.shape[1])
                ],
                1,
            )  # (N, C, U)
            h = torch.einsum("ncu,ncd,ndu->nu", jac, lzz, jac)
        return g.detach(), h.detach()

    def update(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        g, h = (t.double().cpu() for t in self.per_sample(model, x, y))
        d = -g + 0.5 * h
        self.abs_g_ += g.abs().sum(0)
        self.sum_g_ += g.sum(0)
        n_b, mean_b = d.shape[0], d.mean(0)  # merge the batch's moments (Chan et al.)
        total = self.n_ + n_b
        delta = mean_b - self.mean_
        self.mean_ += delta * n_b / total
        self.m2_ += ((d - mean_b) ** 2).sum(0) + delta**2 * self.n_ * n_b / total
        self.n_ = total

    def taylor(self) -> Tensor:
        """``mean_n |g_nu|`` (Molchanov et al. 2017)."""
        return self.abs_g_ / max(self.n_, 1)

    def mean_g(self) -> Tensor:
        """``mean_n g_nu`` (the first-order term; ~0 near a minimum)."""
        return self.sum_g_ / max(self.n_, 1)

    def mean(self) -> Tensor:
        """``mean_n d_nu``."""
        return self.mean_.clone()

    def sd(self) -> Tensor:
        """Population standard deviation of ``d_nu`` over the samples."""
        return (self.m2_ / max(self.n_, 1)).clamp(min=0).sqrt()


def gate_losses(model: nn.Module, group: Group, gates: Tensor, batches, loss_fn: LossFn) -> Tensor:
    """Mean loss over ``batches`` with the consumers reading ``gates[k] * a``, for every row
    of ``gates`` (K, U): (K,) float64. Rows are evaluated ``chunk`` at a time by repeating
    each batch, one forward per chunk."""
    total = torch.zeros(gates.shape[0], dtype=torch.float64)
    count = 0
    for x, y in batches:
        n = x.shape[0]
        chunk = max(1, 4096 // n)
        for start in range(0, gates.shape[0], chunk):
            rows = gates[start : start + chunk]
            k = rows.shape[0]
            per_sample = rows.repeat_interleave(n, dim=0)  # (k * n, U)
            xr = x.repeat(k, *([1] * (x.dim() - 1)))
            with torch.no_grad(), gated(model, group, per_sample.to(x.device)):
                z = model(xr)
            for j in range(k):
                part = z[j * n : (j + 1) * n]
                total[start + j] += float(checked(loss_fn, part, y, "the calibration data")) * n
        count += n
    return total / max(count, 1)
