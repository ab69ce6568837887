"""Per-sample quantities of one tensor, kept factored where the layer allows it.

A Linear layer fed one input row per sample has per-sample gradients ``g_n = u_n v_n^T``
(``u`` the output gradient, ``v`` the input), so any entrywise product of such fields
stays an outer product and its sum over samples is one matmul: ``sum_n (u_n^2)(v_n^2)^T =
(U^2)^T V^2``. That keeps the Fisher, GGN and OBD-SD statistics at the cost of a few gradient
passes instead of materialising an (N, P) tensor. Other layers use :class:`Dense`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Outer:
    """Per-sample field ``f_n = u_n v_n^T`` (``v`` None: ``f_n = u_n``, a bias).

    ``u`` (n, out), ``v`` (n, in) or None; ``shape`` the tensor's shape (out, in) or (out,).
    """

    u: Tensor
    v: Tensor | None
    shape: torch.Size

    def __mul__(self, other: Field) -> Field:
        if isinstance(other, Outer) and (self.v is None) == (other.v is None):
            v = None if self.v is None else self.v * other.v
            return Outer(self.u * other.u, v, self.shape)
        return self.dense() * other

    def abs(self) -> Outer:
        return Outer(self.u.abs(), None if self.v is None else self.v.abs(), self.shape)

    def square(self) -> Outer:
        return self * self

    def sum(self) -> Tensor:
        """``sum_n f_n`` with the tensor's shape."""
        if self.v is None:
            return self.u.sum(0).reshape(self.shape)
        return (self.u.T @ self.v).reshape(self.shape)

    def dense(self) -> Dense:
        if self.v is None:
            return Dense(self.u.reshape(-1, *self.shape))
        return Dense((self.u.unsqueeze(2) * self.v.unsqueeze(1)).reshape(-1, *self.shape))

    def to(self, dtype: torch.dtype) -> Outer:
        return Outer(self.u.to(dtype), None if self.v is None else self.v.to(dtype), self.shape)

    @property
    def n(self) -> int:
        return self.u.shape[0]


@dataclass
class Dense:
    """Per-sample field stored in full: ``g`` (n, *shape)."""

    g: Tensor

    def __mul__(self, other: Field) -> Dense:
        other = other.dense() if isinstance(other, Outer) else other
        return Dense(self.g * other.g)

    def abs(self) -> Dense:
        return Dense(self.g.abs())

    def square(self) -> Dense:
        return Dense(self.g * self.g)

    def sum(self) -> Tensor:
        return self.g.sum(0)

    def dense(self) -> Dense:
        return self

    def to(self, dtype: torch.dtype) -> Dense:
        return Dense(self.g.to(dtype))

    @property
    def n(self) -> int:
        return self.g.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.g.shape[1:]


Field = Outer | Dense


def sum_of_squares(fields: Iterable[Field]) -> Field:
    """``sum_k f_k^2`` per sample (the per-sample GGN diagonal from the factor columns ``k``).

    Outer fields sharing their input ``v`` stay factored: ``sum_k (u_k v^T)^2 = (sum_k u_k^2)
    (v^2)^T``; anything else is accumulated densely, one field at a time.
    """
    it = iter(fields)
    first = next(it)
    if isinstance(first, Outer):
        rest = list(it)
        if all(isinstance(f, Outer) and f.v is first.v for f in rest):
            u2 = first.u * first.u
            for f in rest:
                u2 = u2 + f.u * f.u
            return Outer(u2, None if first.v is None else first.v * first.v, first.shape)
        it = iter(rest)
    g = first.dense().g
    total = g * g
    for f in it:
        g = f.dense().g
        total = total + g * g
    return Dense(total)
