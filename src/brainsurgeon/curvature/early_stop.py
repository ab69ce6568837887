"""Calibration forwards that stop once the listened-to layer has run.

Layer-wise solvers (sequential SparseGPT, GPTQ) collect one layer's inputs at a time, so a
forward pass only has to reach that layer: the rest of the model is wasted work (half of
it on average). :func:`run_batches` feeds every batch; the first one runs the whole model
and counts how often ``owner`` is called; when it is called exactly once per forward (no
weight sharing), the later batches are aborted right after ``owner`` (its forward hooks,
registered before, have seen its inputs). The statistics are the same as with full passes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class _Stop(Exception):
    """Raised by the stop hook to abort a forward pass (never escapes :func:`run_batches`)."""


def run_batches(model: nn.Module, owner: nn.Module, batches: Iterable) -> int:
    """``model(x)`` for every ``(x, _)`` of ``batches``, stopped after ``owner`` where that
    is exact; returns the number of batches aborted early."""
    calls = [0]

    def count(*_):
        calls[0] += 1

    def stop(*_):
        raise _Stop

    stopped = 0
    for i, (x, _) in enumerate(batches):
        if i == 0:
            handle = owner.register_forward_hook(count)
            try:
                model(x)
            finally:
                handle.remove()
            continue
        if calls[0] != 1:
            model(x)
            continue
        handle = owner.register_forward_hook(stop)
        try:
            model(x)
        except _Stop:
            stopped += 1
        finally:
            handle.remove()
    return stopped


@torch.no_grad()
def forward_batches(model: nn.Module, owner: nn.Module, data, batch_size: int, device) -> int:
    """:func:`run_batches` over ``data.batches(batch_size, device=device)``, no grad."""
    return run_batches(model, owner, data.batches(batch_size, device=device))
