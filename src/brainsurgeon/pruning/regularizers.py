"""Sparsity-inducing regularisers, as ``penalty(model) -> scalar`` callables for
``brainsurgeon.training.fit(penalties=...)``, and a proximal step.

* ``lp_penalty``: ``l1 * sum |w| + l2 * sum w^2`` over layer weights.
* ``group_lasso``: DropNeuron (Pan et al. 2016): ``lam * (sum_i ||W[i, :]||_2 +
  sum_j ||W[:, j]||_2)``; a zero row removes output neuron ``i`` (its incoming weights), a
  zero column removes input unit ``j`` (its outgoing weights). Conv weights ``(out, in, *k)``:
  rows are filters, columns are input channels.
* ``ReweightedL1``: reweighted proximal pruning (RPP, Guo et al. 2019): the penalty
  ``lam * sum_q a_q |w_q|`` with ``a_q = 1 / (|w_q| + eps)`` re-estimated by ``reweight``,
  kept out of the gradient and applied by the proximal (soft-threshold) step
  ``w <- sign(w) max(|w| - lr * lam * a, 0)`` after each optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..models.adapters import TensorLayout, compressible, layout_of
from ..state import original
from ..training import lp_penalty

Penalty = Callable[[nn.Module], torch.Tensor]

__all__ = ["Penalty", "ReweightedL1", "group_lasso", "lp_penalty"]


def _weights(model: nn.Module) -> list[tuple[str, nn.Module, str, TensorLayout]]:
    """Every compressible weight (not bias) with its layout."""
    out = []
    for name, (module, tensor) in compressible(model).items():
        layout = layout_of(module, tensor)
        if layout.in_axis is not None:
            out.append((name, module, tensor, layout))
    return out


def _unit_norms(w: torch.Tensor, axis: int) -> torch.Tensor:
    """``||w[..., i, ...]||_2`` for every index ``i`` along ``axis``."""
    dims = tuple(d for d in range(w.dim()) if d != axis)
    return w.pow(2).sum(dim=dims).add(1e-12).sqrt()


def group_lasso(lam: float, *, rows: bool = True, columns: bool = True) -> Penalty:
    """``lam * (sum_i ||W[i, :]||_2 + sum_j ||W[:, j]||_2)`` over the compressible weights:
    ``i`` the output units (neurons, filters), ``j`` the input units (the adapter's layout)."""

    def penalty(model: nn.Module) -> torch.Tensor:
        total = None
        for _, module, tensor, layout in _weights(model):
            w = getattr(module, tensor)
            term = w.new_zeros(())
            if rows:
                term = term + _unit_norms(w, layout.out_axis).sum()
            if columns:
                term = term + _unit_norms(w, layout.in_axis).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return lam * total

    return penalty


class ReweightedL1:
    """RPP's reweighted L1 with a proximal step; call ``step(model, lr)`` after ``opt.step()``.

    ``lam``: strength; ``eps``: keeps ``a_q`` finite. ``reweight(model)`` re-estimates
    ``a_q = 1 / (|w_q| + eps)`` from the current weights (RPP reweights every few epochs);
    before the first ``reweight`` all ``a_q = 1`` (plain L1).
    """

    def __init__(self, lam: float, eps: float = 1e-3) -> None:
        self.lam, self.eps = float(lam), float(eps)
        self.weights_: dict[str, torch.Tensor] = {}

    def reweight(self, model: nn.Module) -> None:
        self.weights_ = {
            name: 1.0 / (getattr(module, tensor).detach().abs() + self.eps)
            for name, module, tensor, _ in _weights(model)
        }

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The penalty's value (for monitoring; not for the gradient)."""
        total = torch.zeros(())
        for name, module, tensor, _ in _weights(model):
            w = getattr(module, tensor).detach()
            a = self.weights_.get(name, torch.ones_like(w))
            total = total + (a * w.abs()).sum().cpu()
        return self.lam * total

    @torch.no_grad()
    def step(self, model: nn.Module, lr: float) -> None:
        """Soft-threshold every layer weight: ``sign(w) max(|w| - lr lam a, 0)``."""
        for name, module, tensor, _ in _weights(model):
            w = original(module, tensor)
            a = self.weights_.get(name)
            shrink = lr * self.lam * (a if a is not None else 1.0)
            w.copy_(w.sign() * (w.abs() - shrink).clamp(min=0.0))
