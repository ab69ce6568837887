"""``export_onnx``: a run (dense, pruned, shrunk, quantized) as an ONNX file that onnxruntime runs.

Masks, quantizers and factors are baked first (``load_run(..., inference=True)``), so the
graph holds the model as it computes. ``runtime="int8"`` quantizes the float graph with
onnxruntime's tools (:mod:`.quantize`: dynamic by default, static QDQ calibrated on the run's
training data). Before anything is written, onnxruntime runs the graph on a batch of the run's
real test data and its outputs are compared with PyTorch's float model:

    relative error = max |y_ort - y_torch| / max |y_torch|

must stay within :data:`FLOAT_TOLERANCE` (1e-4) for float graphs and :data:`INT8_TOLERANCE`
(0.05) for int8 ones, else :class:`NumericalError` and no file. The file is written atomically.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import write_bytes
from ..errors import ConfigError, NumericalError
from .quantize import DEFAULT_INT8, MODES, quantize_int8
from .session import INPUT, OPSET, OUTPUT, make_session, onnx_bytes, require_onnx, run_session

FLOAT_TOLERANCE = 1e-4
INT8_TOLERANCE = 0.05
ONNX_RUNTIMES = ("dense", "int8")
CHECK_SAMPLES = 256
CALIBRATION_SAMPLES = 256


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how its onnxruntime outputs compared with PyTorch."""

    path: Path
    runtime: str
    int8: str | None
    batch_dynamic: bool
    input_shape: list[Any]
    output_shape: list[Any]
    file_bytes: int
    check: dict[str, Any]
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def export_onnx(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    runtime: str = "dense",
    int8: str = DEFAULT_INT8,
    batch_dynamic: bool = True,
    batch: int = 1,
    check_samples: int = CHECK_SAMPLES,
    data=None,
) -> OnnxExport:
    """Write ``model`` (or the run directory / ``.bsc`` file it names) to ``path`` as ONNX.

    ``runtime``: ``dense`` (float32) or ``int8`` (MatMul/Gemm in int8 via onnxruntime
    quantization, ``int8`` = ``dynamic`` | ``static``). Input ``input`` (B, ...), output
    ``output`` (B, ...); B is dynamic unless ``batch_dynamic=False`` (then fixed to
    ``batch``). ``data``: the checking (and static calibration) data, default the run's own;
    without any, the check runs on standard-normal inputs of the recorded shape.
    """
    onnx, ort = require_onnx()
    if runtime not in ONNX_RUNTIMES:
        raise ConfigError(
            f"ONNX export supports runtime {' or '.join(ONNX_RUNTIMES)}, got {runtime!r}; the "
            "sparse runtime's CSR layers have no ONNX form, export it as dense"
        )
    if int8 not in MODES:
        raise ConfigError(f"int8 must be one of {', '.join(MODES)}, got {int8!r}")
    model, data = _baked(model, data)
    check_x, source = _check_inputs(model, data, check_samples)
    if not batch_dynamic:  # whole fixed-size batches
        check_x = check_x[: max(1, len(check_x) - len(check_x) % max(1, int(batch)))]
    shape_batch = check_x[: max(1, int(batch))] if not batch_dynamic else check_x[:2]
    graph = onnx_bytes(model, shape_batch, batch_dynamic=batch_dynamic)
    quant = None
    if runtime == "int8":
        quant = int8
        calib = _calibration(data, int8)
        step = 32 if batch_dynamic else max(1, int(batch))
        graph = quantize_int8(graph, int8, calibration=calib, calibration_batch=step)
    check = compare(model, graph, check_x, batch=None if batch_dynamic else int(batch))
    _require_close(check, INT8_TOLERANCE if quant else FLOAT_TOLERANCE, source)
    write_bytes(path, graph)
    out_tail = list(check.pop("output_tail"))
    dim0 = "batch" if batch_dynamic else int(batch)
    return OnnxExport(
        path=Path(path), runtime=runtime, int8=quant, batch_dynamic=batch_dynamic,
        input_shape=[dim0, *check_x.shape[1:]], output_shape=[dim0, *out_tail],
        file_bytes=len(graph), check=check,
        versions={"onnx": onnx.__version__, "onnxruntime": ort.__version__, "opset": OPSET,
                  "input": INPUT, "output": OUTPUT},
    )  # fmt: skip


def compare(model: nn.Module, graph: bytes, x: torch.Tensor, *, batch: int | None) -> dict:
    """onnxruntime's outputs of ``graph`` against ``model``'s on ``x`` (N, ...), in chunks
    of ``batch`` for a fixed-batch graph: max abs diff, relative error, top-1 agreement."""
    session = make_session(graph, threads=1)
    with torch.no_grad():
        ref = model(x).float()
    if batch is None:
        got = run_session(session, x)
    else:
        got = torch.cat([run_session(session, x[i : i + batch]) for i in range(0, len(x), batch)])
    return {**agreement(ref, got), "output_tail": tuple(ref.shape[1:])}


def agreement(ref: torch.Tensor, got: torch.Tensor) -> dict:
    """``got`` (N, ...) against the reference outputs: samples, max abs diff, max |ref|,
    relative error ``max |got - ref| / max |ref|`` (inf if ``got`` is not finite), and
    top-1 agreement for (N, C) outputs."""
    diff = float((got - ref).abs().max())
    scale = float(ref.abs().max())
    out = {
        "samples": int(len(ref)),
        "max_abs_diff": diff,
        "max_abs_output": scale,
        "relative_error": diff / max(scale, 1e-12),
    }
    if ref.dim() == 2 and ref.shape[1] > 1:
        out["top1_agreement"] = float((got.argmax(1) == ref.argmax(1)).float().mean())
    if not bool(torch.isfinite(got).all()):
        out["relative_error"] = float("inf")
    return out


def _require_close(check: dict, tolerance: float, source: str) -> None:
    """Record the tolerance in ``check``; :class:`NumericalError` if it is exceeded."""
    check.update(source=source, tolerance=tolerance)
    check["passed"] = check["relative_error"] <= tolerance
    if not check["passed"]:
        raise NumericalError(
            f"onnxruntime's outputs differ from PyTorch's by {check['relative_error']:.3g} "
            f"(relative, max {check['max_abs_diff']:.3g}) > tolerance {tolerance:g} on "
            f"{check['samples']} samples; nothing written (try --runtime dense or "
            "--int8 static/dynamic)"
        )


def _baked(model, data):
    """A baked CPU eval model, and the data to check with (the run's own unless given)."""
    if isinstance(model, nn.Module):
        from ..runtime import to_inference

        return to_inference(model).cpu(), data
    from ..runs import load_run

    run = load_run(model, inference=True)
    if data is None and run.config.get("data"):
        data = run.data()
    return run.model.cpu(), data


def _check_inputs(model: nn.Module, data, n: int) -> tuple[torch.Tensor, str]:
    n = max(2, int(n))
    if data is not None:
        from ..data import as_dataset

        split = "test" if hasattr(data, "test") else "train"
        x = as_dataset(data, split).x[:n]
        x = x if x.dtype == torch.int64 else x.float()
        return x, f"{getattr(data, 'name', 'data')} {split} split, first {len(x)} samples"
    from ..structured.api import example_of

    example = example_of(model, None)
    if example.dtype == torch.int64:  # a token model: its own full-length example
        return example[:1].expand(n, *example.shape[1:]).clone(), f"{n} full-length token inputs"
    shape = example.shape[1:]
    x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))
    return x, f"{n} standard-normal inputs (the run records no data)"


def _calibration(data, mode: str) -> torch.Tensor | None:
    if mode != "static":
        return None
    if data is None:
        raise ConfigError(
            "static int8 calibrates on the run's training data and this run records none; "
            "use --int8 dynamic"
        )
    from ..data import as_dataset

    return as_dataset(data, "train").subset(CALIBRATION_SAMPLES, seed=0).x.float()
