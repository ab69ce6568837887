"""Peak memory of sequential SparseGPT 50%: block by block against the whole-model path.

Each variant runs in a fresh subprocess (``--variant``) that builds an ``nn.Sequential``
MLP of ``layers`` Linear(width, width) + ReLU (fp32, seed 0), draws ``samples`` Gaussian
calibration inputs and calls ``layerwise-obs`` ``solve(ctx, 0.5)`` (method sparsegpt,
batch 64) with ``calibration="blockwise"`` or ``"whole"``. It reports the RSS high-water
mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the RSS once the model and data
are built (the baseline), against the weights' size. ``solve`` returns the new weights and
the keep-masks (``1.25 x`` the weights: fp32 + bool), so the least a solve can peak at is
``baseline + 1.25 x weights``; the rest is its working memory. The whole-model path also
copies the model (``+1 x weights``) and re-runs it once per layer.

``python benchmarks/memory.py [--small] [--threads N]`` writes
``benchmarks/results/memory.json`` (``--small``: ``memory_small.json``, 6 layers of 512).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"layers": 24, "width": 4096, "samples": 128}
SMALL = {"layers": 6, "width": 512, "samples": 128}
MB = 2**20


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(variant: str, layers: int, width: int, samples: int, threads: int) -> dict:
    """One variant in this process: build, solve, measure."""
    import torch
    from torch import nn

    from brainsurgeon.data.core import Dataset
    from brainsurgeon.pruning.criteria import SaliencyContext, make_criterion

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with torch.no_grad():
        mods = []
        for _ in range(layers):
            lin = nn.Linear(width, width)
            lin.weight.normal_(0, width**-0.5)
            mods += [lin, nn.ReLU()]
        model = nn.Sequential(*mods[:-1])
    data = Dataset(torch.randn(samples, width), torch.zeros(samples, dtype=torch.long))
    targets = {
        f"{i}.weight": (m, "weight") for i, m in enumerate(model) if isinstance(m, nn.Linear)
    }
    ctx = SaliencyContext(model, targets, data, batch_size=64)
    weights_mb = sum(m.weight.numel() * 4 for m, _ in targets.values()) / MB
    base, peak0 = _rss_mb(), _peak_mb()
    crit = make_criterion("layerwise-obs", method="sparsegpt", calibration=variant)
    start = time.perf_counter()
    keep, new = crit.solve(ctx, 0.5)
    wall = time.perf_counter() - start
    sparsity = sum(int((~k).sum()) for k in keep.values()) / sum(k.numel() for k in keep.values())
    peak = _peak_mb()
    digest = hashlib.sha1()
    for name in targets:
        digest.update(keep[name].numpy().tobytes())
    return {
        "mask_sha1": digest.hexdigest(),
        "weights_sq_sum": float(sum(new[n].double().pow(2).sum() for n in targets)),
        "variant": variant,
        "calibrated": crit.calibrated_,
        "weights_mb": round(weights_mb, 1),
        "baseline_rss_mb": round(base, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_before_solve_mb": round(peak0, 1),
        "solve_extra_mb": round(peak - base, 1),
        "solve_extra_over_weights": round((peak - base) / weights_mb, 3),
        "working_mb": round(peak - base - 1.25 * weights_mb, 1),
        "peak_over_weights": round(peak / weights_mb, 3),
        "wall_s": round(wall, 1),
        "sparsity": round(sparsity, 4),
        "threads": threads,
    }


def _run_variant(variant: str, size: dict, threads: int, limit_mb: float | None) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--threads", str(threads)]
    cmd += [f"--{k}={v}" for k, v in size.items()]
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    pre = None
    if limit_mb is not None:
        lim = int(limit_mb * MB)

        def pre():
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=pre)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"variant": variant, "ok": False, "returncode": proc.returncode, "error": tail}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["ok"], out["process_wall_s"] = True, round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", choices=["blockwise", "whole"])
    p.add_argument("--layers", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--samples", type=int)
    p.add_argument("--limit-mb", type=float, default=None, help="address-space cap per child")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(child(args.variant, args.layers, args.width, args.samples, args.threads)))
        return
    size = SMALL if args.small else FULL
    load_before = os.getloadavg()
    runs = [_run_variant(v, size, args.threads, args.limit_mb) for v in ("blockwise", "whole")]
    ok = all(r.get("ok") for r in runs)
    same = (
        {
            "masks_identical": runs[0]["mask_sha1"] == runs[1]["mask_sha1"],
            "weights_sq_sum_rel_diff": abs(runs[0]["weights_sq_sum"] - runs[1]["weights_sq_sum"])
            / runs[1]["weights_sq_sum"],
        }
        if ok
        else "a variant did not finish"
    )
    result = {
        "equality": same,
        "benchmark": "peak memory of sequential SparseGPT 50% (layerwise-obs), per variant",
        "model": f"nn.Sequential MLP, {size['layers']} x Linear({size['width']}, "
        f"{size['width']}) + ReLU, fp32, seed 0",
        "size": size,
        "calibration_batch": 64,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
        },
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "runs": runs,
        "notes": "peak = RSS high-water of a fresh process per variant; solve() returns new "
        "weights + masks (1.25 x weights), counted in solve_extra; working_mb = "
        "solve_extra - 1.25 x weights",
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("memory_small.json" if args.small else "memory.json")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
