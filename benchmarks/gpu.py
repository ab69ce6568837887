"""GPU figures: wall time on cuda against cpu, and the CLI end to end with ``--device cuda``.

When ``torch.cuda.is_available()``: times (best of ``--repeat``, after a warm-up, with
``torch.cuda.synchronize``) OBD-SD statistics (``DamageStats`` over ``--samples`` inputs),
one SparseGPT 50% solve and one GPTQ 4-bit solve of a ``width x width`` layer, on a
``width``-wide MLP of ``--layers`` layers (fp32, seed 0), on cuda and on cpu, and the peak
GPU memory; then runs ``train``, ``prune`` (layerwise-obs, obd-sd), ``quantize`` (gptq,
kmeans) and ``evaluate`` on digits with ``--device cuda`` and records their exit codes and
wall times. Without a GPU it writes a JSON saying so and exits 0 (a recorded GPU
result is kept, not overwritten).

``python benchmarks/gpu.py [--width 4096] [--layers 4] [--samples 512] [--small]``
writes ``benchmarks/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
DEVICE = "cuda"  # the end-to-end commands' --device (tests of this script set "cpu")


def _timed(fn, device: torch.device, repeat: int) -> float:
    fn()  # warm-up (kernels, allocator)
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _mlp(width: int, layers: int, classes: int = 10) -> nn.Sequential:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(layers - 1):
        mods += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(width, classes))


def _workloads(width: int, layers: int, samples: int, device: torch.device):
    from brainsurgeon.curvature import DamageStats, collect
    from brainsurgeon.data.core import Dataset
    from brainsurgeon.quantization.methods.uniform import fake_quantize
    from brainsurgeon.solvers import gptq, sparsegpt

    model = _mlp(width, layers).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, width, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    data = Dataset(x, y)
    targets = {f"{i}.weight": (m, "weight") for i, m in enumerate(model) if hasattr(m, "weight")}
    W = model[0].weight.detach().clone()
    X = x.to(device)
    H = 2 * X.T @ X / samples
    scale = W.abs().amax(1) / 7
    zero = torch.zeros_like(scale)

    def obd_sd():
        acc = DamageStats(model, targets, nn.functional.cross_entropy, chunk_size=128)
        collect(acc, model, data, batch_size=256, device=device)

    def quant(col, j):
        return fake_quantize(col, scale, zero, 4, True)

    return {
        "obd_sd_statistics": obd_sd,
        "sparsegpt_layer": lambda: sparsegpt(W, H, 0.5),
        "gptq_layer": lambda: gptq(W, H, quant),
    }


def timings(width: int, layers: int, samples: int, repeat: int) -> dict:
    out: dict = {}
    for kind in ("cuda", "cpu"):
        device = torch.device(kind)
        if kind == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for name, fn in _workloads(width, layers, samples, device).items():
            out.setdefault(name, {})[f"{kind}_s"] = round(_timed(fn, device, repeat), 4)
        if kind == "cuda":
            out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    for row in out.values():
        if isinstance(row, dict):
            row["speedup"] = round(row["cpu_s"] / row["cuda_s"], 2)
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "brainsurgeon", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def end_to_end() -> list[dict]:
    """The verbs on digits with ``--device cuda``: exit codes and test accuracies."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        steps = [
            ("train", ["train", "--data", "digits", "--epochs", "3", "--out", str(base)]),
            ("prune layerwise-obs", ["prune", str(base), "--out", f"{tmp}/p1",
                                     "--criterion", "layerwise-obs", "--amount", "0.5"]),
            ("prune obd-sd", ["prune", str(base), "--out", f"{tmp}/p2", "--criterion",
                              "obd-sd", "--amount", "0.5", "--max-memory", "256MiB"]),
            ("quantize gptq", ["quantize", str(base), "--out", f"{tmp}/q1", "--method", "gptq"]),
            ("quantize kmeans", ["quantize", str(base), "--out", f"{tmp}/q2",
                                 "--method", "kmeans", "--bits", "4"]),
            ("evaluate", ["evaluate", f"{tmp}/p1"]),
        ]  # fmt: skip
        for name, args in steps:
            start = time.perf_counter()
            proc = _cli(*args, "--device", DEVICE, "--quiet")
            rows.append({
                "step": name, "returncode": proc.returncode,
                "wall_s": round(time.perf_counter() - start, 1),
                "error": proc.stderr.strip().splitlines()[-1:] if proc.returncode else [],
            })  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--small", action="store_true", help="width 512, 2 layers, 128 samples")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = p.parse_args()
    if args.small:
        args.width, args.layers, args.samples = 512, 2, 128
    sys.path.insert(0, str(SRC))
    record: dict = {
        "benchmark": "cuda vs cpu wall time (OBD-SD statistics, SparseGPT, GPTQ) and the CLI "
        "with --device cuda",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        },  # fmt: skip
        "loadavg": os.getloadavg(),
        "cuda": torch.cuda.is_available(),
    }
    if not torch.cuda.is_available():
        record["reason"] = "torch.cuda.is_available() is False: no GPU figures on this machine"
        if args.out.exists() and json.loads(args.out.read_text()).get("cuda"):
            print(f"no GPU here; keeping the GPU result in {args.out}")
            return
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        record["machine"]["gpu"] = torch.cuda.get_device_name(0)
        record["size"] = {"width": args.width, "layers": args.layers, "samples": args.samples}
        record["timings"] = timings(args.width, args.layers, args.samples, args.repeat)
        record["end_to_end"] = end_to_end()
    args.out.parent.mkdir(exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
