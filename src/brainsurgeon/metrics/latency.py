"""Latency: median over repeats with ``torch.utils.benchmark`` (thread count recorded)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from ..utils import module_device


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch_sizes: tuple[int, ...] = (1, 64),
    min_run_time: float = 0.2,
    threads: int | None = None,
) -> dict[str, Any]:
    """``{"batch_1_ms": median, "batch_64_ms": ..., "threads": n, "device": ...}``.

    Each figure is the median of ``blocked_autorange`` measurements (eval mode, no grad).
    """
    device = module_device(model)
    threads = threads or torch.get_num_threads()
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {"threads": threads, "device": str(device)}
    for batch in batch_sizes:
        x = torch.randn(batch, *input_shape, device=device)
        model(x)  # warm-up
        timer = benchmark.Timer(
            stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads
        )
        m = timer.blocked_autorange(min_run_time=min_run_time)
        out[f"batch_{batch}_ms"] = m.median * 1e3
    model.train(was_training)
    return out
