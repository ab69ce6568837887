"""Structured units and the tensors they couple: the vocabulary shared by scoring, masking,
merging and surgery.

A **group** is one set of removable units (the neurons of a Linear layer, the filters of a
convolution, the heads of an attention layer, ...). Removing unit ``u`` removes index ``u``
along one axis of every tensor in the group:

* ``producers``: where the unit is computed (a Linear's weight rows and bias, a conv's
  filters, a norm's per-channel affine and running statistics);
* ``consumers``: where the unit is read (the next Linear's weight columns, the next conv's
  input channels, every branch a residual addition feeds).

A :class:`Slice` names one such tensor dimension. ``unit_size`` > 1 makes each unit a run of
indices (an attention head: ``head_dim`` rows of q, k, v; a flattened conv channel feeding a
Linear: ``h * w`` columns); ``offset`` starts the units inside a larger axis (q, k and v are
three blocks of ``in_proj_weight``; a concatenation's second input).

Removing a unit means: every consumer sees 0 for it. So a structured mask zeroes every slice
of the unit, and the shrunk model (the slices cut out) computes exactly what the masked one
does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

GRANULARITIES = ("element", "neuron", "channel", "input", "block", "nm", "head", "layer")


@dataclass(frozen=True)
class Slice:
    """Dimension ``axis`` of ``module.tensor`` (qualified module name), indexed by units:
    unit ``u`` covers indices ``offset + u * unit_size ... offset + (u + 1) * unit_size - 1``."""

    module: str
    tensor: str
    axis: int
    unit_size: int = 1
    offset: int = 0

    def indices(self, units: torch.Tensor) -> torch.Tensor:
        """The flat indices along ``axis`` covered by ``units`` (a 1-D long tensor)."""
        base = self.offset + units[:, None] * self.unit_size
        return (base + torch.arange(self.unit_size, device=units.device)).reshape(-1)


@dataclass(frozen=True)
class Group:
    """``units`` removable units of ``kind`` (a granularity) named ``name``."""

    name: str
    kind: str
    units: int
    producers: tuple[Slice, ...]
    consumers: tuple[Slice, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def slices(self) -> tuple[Slice, ...]:
        return self.producers + self.consumers


def tensor_of(model: nn.Module, s: Slice) -> torch.Tensor:
    """The tensor a slice names (the trainable original under a parametrization)."""
    from ..state import original

    return original(model.get_submodule(s.module), s.tensor)
