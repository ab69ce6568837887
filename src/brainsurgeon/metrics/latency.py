"""Latency: median over repeats with ``torch.utils.benchmark`` (thread count recorded)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from ..utils import module_device, preserved_modes
from .inputs import ExampleLike, call, example_input, is_shape, repeat


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    example: ExampleLike,
    *,
    batch_sizes: tuple[int, ...] = (1, 64),
    min_run_time: float = 0.2,
    threads: int | None = None,
) -> dict[str, Any]:
    """``{"batch_1_ms": median, "batch_64_ms": ..., "threads": n, "device": ...}``.

    ``example``: one input (tensor, token ids, dict of tensors), data, or a shape (random
    normal float inputs of that shape; token ids 0 for an embedding model). Each figure is
    the median of ``blocked_autorange`` measurements (eval mode, no grad).
    """
    device = module_device(model)
    threads = threads or torch.get_num_threads()
    one = example_input(example, model, device)
    if is_shape(example) and isinstance(one, torch.Tensor) and one.is_floating_point():
        one = torch.randn_like(one)
    out: dict[str, Any] = {"threads": threads, "device": str(device)}
    with preserved_modes(model, "eval"):
        for batch in batch_sizes:
            x = repeat(one, batch)
            call(model, x)  # warm-up
            timer = benchmark.Timer(
                stmt="call(model, x)",
                globals={"model": model, "x": x, "call": call},
                num_threads=threads,
            )
            m = timer.blocked_autorange(min_run_time=min_run_time)
            out[f"batch_{batch}_ms"] = m.median * 1e3
    return out
