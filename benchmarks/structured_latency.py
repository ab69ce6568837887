"""Dense vs shrunk latency on the same runtime, interleaved: the shared timing of the
structured benchmarks (``structured.py``, ``structured_widths.py``).

Runtimes: ``eager`` (``to_inference`` dense), ``frozen`` (TorchScript trace + freeze +
optimize_for_inference), ``onnx`` (onnxruntime through ``to_inference(model, "onnx")``, bound
buffers), ``onnx-run`` (a plain ``InferenceSession.run`` on numpy arrays), ``native`` (the
model compiled to C, called through ``ctypes``: ``to_inference(model, "native")``) and ``c``
(the same C timed by a C program, no Python per call: what a C deployment pays); ``onnx*``
are skipped with the reason when onnxruntime is missing, ``native`` / ``c`` when no C
compiler is. Each round times every (runtime, model,
batch) once in blocks of ~1 ms; kept: the fastest of the rounds' medians (``*_ms``,
``speedup_b*``) and the fastest block of all rounds (``*_min_ms``, ``speedup_min_b*``, the
figure least disturbed by preemption) and the median over rounds of each round's dense /
shrunk ratio (``speedup_paired_b*``: both timed seconds apart, so slow load changes cancel).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
from torch import nn

from brainsurgeon.deploy.native import c_latency_ms, timing_program
from brainsurgeon.runtime import to_inference

BATCHES = (1, 64)


def frozen(model: nn.Module, shape) -> nn.Module:
    """``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference`` (no Python per call)."""
    x = torch.zeros(1, *shape)
    with torch.inference_mode():
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))


def onnx_run(model: nn.Module, shape) -> Callable:
    """A plain ``session.run`` per call (numpy in, numpy out), the usual way to call ORT."""
    from brainsurgeon.deploy import make_session, onnx_bytes

    session = make_session(onnx_bytes(model, torch.zeros(2, *shape)), threads=1)

    def call(x: torch.Tensor):
        return session.run(None, {"input": x.numpy()})[0]

    return call


def runtimes(model: nn.Module, shape) -> tuple[dict[str, Callable], dict[str, str]]:
    """``{runtime: callable}`` for one baked model, and ``{runtime: why skipped}``."""
    base = to_inference(model)
    out: dict[str, Callable] = {"eager": base, "frozen": frozen(base, shape)}
    skipped = {}
    try:
        out["onnx"] = to_inference(base, "onnx")
        out["onnx-run"] = onnx_run(base, shape)
    except Exception as exc:  # onnx / onnxruntime missing or the export refused
        skipped["onnx"] = skipped["onnx-run"] = f"{type(exc).__name__}: {exc}"
    try:
        out["native"] = to_inference(base, "native")
        out["c"] = CProgram(timing_program(out["native"].source))
    except Exception as exc:  # no C compiler, or a layer the C runtime refuses
        skipped["native"] = skipped["c"] = f"{type(exc).__name__}: {exc}"
    return out, skipped


class CProgram:
    """The C timing program of one model: :meth:`block_ms` runs it for ``min_run_time``."""

    def __init__(self, program) -> None:
        self.program = program

    def block_ms(self, x: torch.Tensor, min_run_time: float) -> tuple[float, float]:
        blocks = sorted(c_latency_ms(self.program, len(x), min_run_time))
        return blocks[len(blocks) // 2], blocks[0]


def block_ms(fn: Callable, x: torch.Tensor, min_run_time: float) -> tuple[float, float]:
    """``(median, min)`` ms per call over blocks of calls (each block ~1 ms) filling
    ``min_run_time``: the median is the usual figure; the fastest block is the cost without
    preemption, the robust one when other processes share the cores."""
    if isinstance(fn, CProgram):
        return fn.block_ms(x, min_run_time)
    fn(x)  # warm-up
    t0 = time.perf_counter()
    fn(x)
    per_block = max(1, int(1e-3 / max(time.perf_counter() - t0, 1e-7)))
    blocks: list[float] = []
    end = time.perf_counter() + min_run_time
    while time.perf_counter() < end or len(blocks) < 5:
        t0 = time.perf_counter()
        for _ in range(per_block):
            fn(x)
        blocks.append((time.perf_counter() - t0) / per_block * 1e3)
    blocks.sort()
    return blocks[len(blocks) // 2], blocks[0]


def latency_table(
    dense: nn.Module, small: nn.Module, shape, *, rounds: int = 5, min_run_time: float = 0.2
) -> dict:
    """Per runtime: ``{dense,shrunk}_b{1,64}[_min]_ms`` and ``speedup[_min]_b{1,64}``
    (dense / shrunk)."""
    fns = {}
    (fns["dense"], skip_a), (fns["shrunk"], skip_b) = runtimes(dense, shape), runtimes(small, shape)
    names = [n for n in fns["dense"] if n in fns["shrunk"]]
    xs = {b: torch.randn(b, *shape, generator=torch.Generator().manual_seed(b)) for b in BATCHES}
    times: dict[tuple, list[float]] = {}
    load = [os.getloadavg()[0]]
    with torch.inference_mode():
        for _ in range(rounds):
            for name in names:
                for which in ("dense", "shrunk"):
                    for b in BATCHES:
                        ms = block_ms(fns[which][name], xs[b], min_run_time)
                        times.setdefault((name, which, b), []).append(ms)
            load.append(os.getloadavg()[0])
    table = {}
    for name in names:
        row = {}
        for b in BATCHES:
            for which in ("dense", "shrunk"):
                row[f"{which}_b{b}_ms"] = min(m for m, _ in times[(name, which, b)])
                row[f"{which}_b{b}_min_ms"] = min(f for _, f in times[(name, which, b)])
            row[f"speedup_b{b}"] = row[f"dense_b{b}_ms"] / row[f"shrunk_b{b}_ms"]
            row[f"speedup_min_b{b}"] = row[f"dense_b{b}_min_ms"] / row[f"shrunk_b{b}_min_ms"]
            pairs = zip(times[(name, "dense", b)], times[(name, "shrunk", b)], strict=True)
            ratios = sorted(d[0] / s[0] for d, s in pairs)  # same round: adjacent in time
            row[f"speedup_paired_b{b}"] = ratios[len(ratios) // 2]
        table[name] = row
    return {
        "runtimes": table,
        "skipped": {**skip_a, **skip_b},
        "rounds": rounds,
        "loadavg_1min": load,
    }
