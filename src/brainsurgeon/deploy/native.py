"""The C runtime: a chain model compiled to a shared library and called through ``ctypes``.

>>> fast = to_inference(model, "native")       # an nn.Module; compiles once   # doctest: +SKIP
>>> export_c("runs/lenet300-shrunk", "lenet.c") # the source, for a device       # doctest: +SKIP

:mod:`.c_source` writes the file; here it is compiled with the system C compiler (``$CC``,
else ``cc``, ``gcc`` or ``clang``) at ``-O3 -march=native`` with reassociation allowed (so
the dot products vectorise; results differ from PyTorch's by float rounding, checked below),
cached by the source's sha256 under ``cache_dir()/native``, and loaded with ``ctypes``.
Float32, CPU, one thread, the batch looped in C: built for batch-1 latency of small models.

Before :func:`export_c` writes a file, the compiled code's outputs are compared with
PyTorch's on the run's test data: ``max |y_c - y_torch| / max |y_torch|`` <= 1e-4.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_path, write_text
from ..errors import ConfigError, NumericalError
from .c_source import c_source, chain

TOLERANCE = 1e-4
FLAGS = (
    "-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math",
    "-fno-signed-zeros", "-std=c99", "-shared", "-fPIC",
)  # fmt: skip
COMPILE_TIMEOUT_S = 600


def compiler() -> str:
    """Path of the C compiler (``$CC``, else cc / gcc / clang), or a :class:`ConfigError`."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError(
        f"the C runtime compiles C and found no compiler ({', '.join(names)}); install gcc "
        "or clang, or set CC, or use the onnx runtime"
    )


def build(source: str) -> Path:
    """The shared library of ``source``, compiled once and cached by its sha256."""
    return _compile(source, FLAGS, ".so")


def _compile(source: str, flags: tuple[str, ...], suffix: str) -> Path:
    """``source`` compiled with ``flags`` into the cache (keyed by sha256), atomically."""
    from ..data.sources import cache_dir

    cc = compiler()
    host = f"{os.uname().nodename} {os.uname().machine}"  # -march=native: per machine
    key = hashlib.sha256((cc + host + " ".join(flags) + source).encode()).hexdigest()[:24]
    out_path = cache_dir() / "native" / f"bs-{key}{suffix}"
    if out_path.exists():
        return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.c"
        src.write_text(source)
        with atomic_path(out_path) as out:
            try:
                done = subprocess.run(
                    [cc, *flags, str(src), "-o", str(out), "-lm"],
                    capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise ConfigError(
                    f"{cc} took over {COMPILE_TIMEOUT_S} s on the generated C; the model is "
                    "too large for the C runtime (use the onnx runtime)"
                ) from None
            if done.returncode != 0:
                raise ConfigError(
                    f"{cc} could not compile the generated C (exit {done.returncode}): "
                    f"{done.stderr.strip()[-400:]}"
                )
    return out_path


def timing_program(source: str, name: str = "bs_model") -> Path:
    """An executable timing ``name_forward`` in C, no Python in the loop:
    ``prog BATCH SECONDS`` prints one line per block of calls (~1 ms): microseconds per call."""
    flags = tuple(f for f in FLAGS if f not in ("-shared", "-fPIC", "-std=c99")) + ("-std=gnu99",)
    return _compile(source + _TIMING_MAIN.replace("NAME", name), flags, ".bench")


def c_latency_ms(program: Path, batch: int, seconds: float) -> list[float]:
    """Milliseconds per ``forward`` call of ``batch`` inputs, one figure per ~1 ms block,
    from :func:`timing_program`'s executable run for ``seconds``."""
    done = subprocess.run(
        [str(program), str(int(batch)), repr(float(seconds))],
        capture_output=True, text=True, timeout=60 + 2 * seconds, check=True,
    )  # fmt: skip
    return [float(v) / 1e3 for v in done.stdout.split()]


_TIMING_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double bs_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
  int batch = argc > 1 ? atoi(argv[1]) : 1;
  double seconds = argc > 2 ? atof(argv[2]) : 0.2;
  float *x = malloc(sizeof(float) * (size_t)batch * BS_IN);
  float *y = malloc(sizeof(float) * (size_t)batch * BS_OUT);
  if (!x || !y) return 1;
  for (long i = 0; i < (long)batch * BS_IN; ++i)
    x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
  NAME_forward(batch, x, y);
  double t0 = bs_now();
  NAME_forward(batch, x, y);
  double once = bs_now() - t0;
  long per_block = once > 0 ? (long)(1e-3 / once) : 1000;
  if (per_block < 1) per_block = 1;
  double end = bs_now() + seconds;
  int blocks = 0;
  float sink = 0.0f;
  while (bs_now() < end || blocks < 5) {
    t0 = bs_now();
    for (long k = 0; k < per_block; ++k) {
      NAME_forward(batch, x, y);
      __asm__ __volatile__("" ::: "memory");
    }
    printf("%.4f\n", (bs_now() - t0) / per_block * 1e6);
    sink += y[0];
    ++blocks;
  }
  fprintf(stderr, "%g\n", (double)sink);
  return 0;
}
"""


class NativeModule(nn.Module):
    """Runs a compiled chain: ``forward(x)`` (N, *input_shape) float32 -> (N, *output_shape)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], name: str = "bs_model"):
        super().__init__()
        steps = chain(model, input_shape)
        self.source = c_source(steps, input_shape, name)
        self.library = build(self.source)
        self._lib = ctypes.CDLL(str(self.library))
        self._fn = getattr(self._lib, f"{name}_forward")
        self._fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        self._fn.restype = None
        self.input_shape = tuple(input_shape)
        self.output_shape = steps[-1].shape if steps else tuple(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != self.input_shape:
            raise ConfigError(
                f"this C model takes inputs (N, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous():
            x = x.detach().to("cpu", torch.float32).contiguous()
        y = torch.empty((x.shape[0], *self.output_shape))
        self._fn(x.shape[0], x.data_ptr(), y.data_ptr())
        return y

    def extra_repr(self) -> str:
        return f"input={self.input_shape}, output={self.output_shape}, library={self.library}"


@dataclass(frozen=True)
class CExport:
    """What :func:`export_c` wrote and how the compiled code compared with PyTorch."""

    path: Path
    header: Path
    symbol: str
    input_shape: list[int]
    output_shape: list[int]
    source_bytes: int
    check: dict[str, Any]
    compiler: str
    normalization: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(path=str(self.path), header=str(self.header))
        return d


def export_c(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    name: str = "bs_model",
    check_samples: int = 256,
    data=None,
    input_shape: tuple[int, ...] | None = None,
) -> CExport:
    """Write ``model`` (or the run / ``.bsc`` it names) as C99 ``path`` plus its header
    (``path`` with ``.h``), after checking the compiled code against PyTorch on the run's
    test data (``data``), else on standard-normal inputs of ``input_shape`` (no batch axis;
    needed for a model that neither ``build_model`` built nor comes with data)."""
    from .onnx import _baked, _check_inputs

    model, data = _baked(model, data)
    if data is None and input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        n = max(2, int(check_samples))
        x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))
        source = f"{n} standard-normal inputs of {shape}"
    else:
        from ..state import spec_of

        if data is None and spec_of(model) is None:
            raise ConfigError(
                "export_c checks the C against PyTorch and needs inputs: pass "
                "input_shape=(features,) or data= for a model build_model did not build"
            )
        x, source = _check_inputs(model, data, check_samples)
    if not x.is_floating_point():
        raise ConfigError("the C runtime takes float inputs; token models need the onnx runtime")
    native = NativeModule(model, tuple(x.shape[1:]), name)
    check = compare(model, native, x)
    check["source"] = source
    if not check["passed"]:
        raise NumericalError(
            f"the compiled C differs from PyTorch by {check['relative_error']:.3g} (relative) > "
            f"{TOLERANCE:g} on {check['samples']} samples; nothing written"
        )
    path = Path(path)
    header = path.with_suffix(".h")
    norm = getattr(data, "normalization", None)
    norm = dict(norm) if norm and (norm.get("mean"), norm.get("std")) != (0.0, 1.0) else None
    write_text(header, _header(name, native, norm))
    write_text(path, native.source)
    return CExport(
        path=path, header=header, symbol=f"{name}_forward", input_shape=list(native.input_shape),
        output_shape=list(native.output_shape), source_bytes=len(native.source.encode()),
        check=check, compiler=compiler(), normalization=norm,
    )  # fmt: skip


def compare(model: nn.Module, native: NativeModule, x: torch.Tensor) -> dict[str, Any]:
    """The C outputs against PyTorch's on ``x``: max abs diff, relative error, top-1."""
    from .onnx import agreement

    with torch.no_grad():
        ref = model(x).float()
    out = agreement(ref, native(x))
    out.update(tolerance=TOLERANCE, passed=out["relative_error"] <= TOLERANCE)
    return out


def _header(name: str, native: NativeModule, norm: dict[str, float] | None = None) -> str:
    guard, up = f"{name.upper()}_H", name.upper()
    n_in = int(torch.Size(native.input_shape).numel())
    n_out = int(torch.Size(native.output_shape).numel())
    scaling = ""
    if norm:  # the run's data were normalised before the model: so must a C caller's
        scaling = (
            f"/* Inputs are normalised as in training: x = (raw - {up}_MEAN) / {up}_STD. */\n"
            f"#define {up}_MEAN {norm['mean']!r}f\n#define {up}_STD {norm['std']!r}f\n"
        )
    return (
        f"/* Generated by brainsurgeon: the C model of {name}_forward. */\n"
        f"#ifndef {guard}\n#define {guard}\n"
        f"#define {up}_IN {n_in}\n#define {up}_OUT {n_out}\n{scaling}"
        f"/* x: n * {n_in} floats, y: n * {n_out} floats, row-major. */\n"
        f"void {name}_forward(int n, const float *x, float *y);\n"
        f"#endif\n"
    )
