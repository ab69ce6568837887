"""Sparse inference runtime: latency of dense vs sparse kernels, and the baking fix.

    python benchmarks/sparse_runtime.py [--quick]

Writes benchmarks/results/sparse_runtime.json (sparse_runtime-quick.json with --quick).
One torch thread; ms = the fastest of 3 interleaved ``blocked_autorange`` medians (the
machine is shared; the variants being compared are timed side by side in one run).

* ``models``: LeNet-300-100 (random init, global magnitude pruning to 92%) and a
  4096-4096-4096 MLP (per-layer magnitude masks at 90/95/98%), at batch 1 and 64: the model
  as loaded (mask parametrizations run every forward), ``to_inference`` dense and sparse.
* ``kernels``: one Linear layer of each model through every candidate kernel: dense
  ``F.linear``, torch CSR (int64 and int32 indices) ``sparse.mm``, COO, BSR 4x4, scipy CSR
  on zero-copy numpy views, and ``SparseLinear`` (which picks scipy at one row, torch CSR
  int32 otherwise).
* ``sweep`` / ``crossover``: dense vs ``SparseLinear`` over sparsity for three layer sizes;
  the crossover is the smallest sparsity from which SparseLinear is faster at every higher
  sparsity measured (None: never).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

import brainsurgeon as bs
from brainsurgeon._io import write_json
from brainsurgeon.pruning.masks import set_mask
from brainsurgeon.runtime import DEFAULT_MIN_SPARSITY, SparseLinear, to_inference, weight_sparsity
from brainsurgeon.utils import environment, seed_everything

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0
BATCHES = (1, 64)
ROUNDS = 3


def median_ms(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, run: float) -> float:
    """Median ms of ``fn(x)`` under no_grad (one thread)."""
    timer = benchmark.Timer(
        stmt="with torch.no_grad(): fn(x)",
        globals={"fn": fn, "x": x, "torch": torch},
        num_threads=1,
    )
    return timer.blocked_autorange(min_run_time=run).median * 1e3


def side_by_side(fns: dict[str, Callable], x: torch.Tensor, run: float) -> dict[str, float]:
    """Median ms of each ``fn(x)``, measured in ROUNDS interleaved rounds; the fastest round
    of each is kept (the machine is shared, so slow rounds are other jobs' noise)."""
    best = {name: math.inf for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            best[name] = min(best[name], median_ms(fn, x, run))
    return best


def masked_linear(out_f: int, in_f: int, sparsity: float) -> nn.Linear:
    """A random Linear with the ``sparsity`` smallest |w| set to zero (plain tensor)."""
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        layer.weight.mul_(magnitude_keep(layer.weight, sparsity))
    return layer


def magnitude_keep(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the (1 - sparsity) largest |w|."""
    k = math.ceil(sparsity * weight.numel() - 1e-6)
    if k == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    threshold = weight.detach().abs().flatten().kthvalue(k).values
    return weight.detach().abs() > threshold


def kernels(layer: nn.Linear) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Every candidate way to compute ``layer(x)`` for x (N, in)."""
    w, b = layer.weight.detach(), layer.bias.detach()
    csr = w.to_sparse_csr()
    crow, col = csr.crow_indices().int(), csr.col_indices().int()
    csr32 = torch.sparse_csr_tensor(crow, col, csr.values(), w.shape, check_invariants=False)
    coo = w.to_sparse().coalesce()
    bsr = w.to_sparse_bsr((4, 4)) if w.shape[0] % 4 == 0 and w.shape[1] % 4 == 0 else None
    sparse = SparseLinear.from_dense(layer)
    scipy_w = sparse._scipy()
    out = {
        "dense": lambda x: F.linear(x, w, b),
        "csr_int64": lambda x: torch.sparse.mm(csr, x.t()).t() + b,
        "csr_int32": lambda x: torch.sparse.mm(csr32, x.t()).t() + b,
        "coo": lambda x: torch.sparse.mm(coo, x.t()).t() + b,
        "scipy_csr": lambda x: torch.from_numpy(scipy_w @ x.numpy().T).t() + b,
        "SparseLinear": sparse,
    }
    if bsr is not None:
        out["bsr_4x4"] = lambda x: torch.addmm(b[:, None], bsr, x.t()).t()
    return out


def kernel_rows(name: str, layer: nn.Linear, run: float) -> list[dict]:
    rows = []
    for batch in BATCHES:
        x = torch.randn(batch, layer.in_features)
        times = side_by_side(kernels(layer), x, run)
        best_ms, best = min((t, k) for k, t in times.items() if k != "dense")
        rows.append(
            {
                "layer": name,
                "batch": batch,
                "sparsity": round(weight_sparsity(layer.weight), 4),
                "ms": times,
                "best_sparse_kernel": best,
                "best_speedup": times["dense"] / best_ms,
                "SparseLinear_speedup": times["dense"] / times["SparseLinear"],
            }
        )
        print(f"kernels {name} b{batch}: " + _fmt(times), file=sys.stderr, flush=True)
    return rows


def model_rows(name: str, model: nn.Module, shape: tuple[int, ...], run: float) -> list[dict]:
    """Latency of the parametrized model, to_inference dense and sparse, and their memory."""
    variants = {
        "parametrized": model.eval(),
        "dense": to_inference(model),
        "sparse": to_inference(model, "sparse"),
    }
    bytes_ = {k: _weight_bytes(m) for k, m in variants.items() if k != "parametrized"}
    rows = []
    for batch in BATCHES:
        x = torch.randn(batch, *shape)
        times = side_by_side(variants, x, run)
        rows.append({"model": name, "batch": batch, "ms": times, "weight_bytes": bytes_})
        print(f"model {name} b{batch}: " + _fmt(times), file=sys.stderr, flush=True)
    return rows


def sweep(sizes: dict[str, tuple[int, int]], sparsities: list[float], run: float) -> list[dict]:
    rows = []
    for name, (out_f, in_f) in sizes.items():
        for s in sparsities:
            layer = masked_linear(out_f, in_f, s)
            sparse = SparseLinear.from_dense(layer)
            for batch in BATCHES:
                x = torch.randn(batch, in_f)
                times = side_by_side({"dense": layer, "sparse": sparse}, x, run)
                dense_ms, sparse_ms = times["dense"], times["sparse"]
                rows.append(
                    {"layer": name, "sparsity": s, "batch": batch, "dense_ms": dense_ms,
                     "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
                     "bytes_ratio": sparse.nbytes() / _weight_bytes(layer)}
                )  # fmt: skip
            print(f"sweep {name} s={s}: {rows[-2]['speedup']:.2f}x b1, "
                  f"{rows[-1]['speedup']:.2f}x b64", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def crossover(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per layer and batch: smallest sparsity from which sparse wins at all higher ones."""
    out: dict[str, dict[str, float | None]] = {}
    for layer in dict.fromkeys(r["layer"] for r in rows):
        for batch in BATCHES:
            pts = sorted((r["sparsity"], r["speedup"]) for r in rows
                         if r["layer"] == layer and r["batch"] == batch)  # fmt: skip
            first = None
            for s, speedup in reversed(pts):
                if speedup <= 1.0:
                    break
                first = s
            out.setdefault(layer, {})[f"batch_{batch}"] = first
    return out


def model_summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per model and batch: baking speedup (as loaded / dense) and sparse speedup."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        ms, size = r["ms"], r["weight_bytes"]
        out[f"{r['model']} batch {r['batch']}"] = {
            "baked_vs_parametrized": round(ms["parametrized"] / ms["dense"], 2),
            "sparse_vs_dense": round(ms["dense"] / ms["sparse"], 2),
            "sparse_bytes_ratio": round(size["sparse"] / size["dense"], 3),
        }
    return out


def lenet(run: float) -> tuple[list[dict], list[dict]]:
    model = bs.build_model("lenet300", (1, 28, 28), 10)
    bs.prune(model, bs.PruneConfig(criterion="magnitude", amount=0.92), progress=False)
    baked = to_inference(model)
    layers = [kernel_rows(f"lenet300.{n}", baked.get_submodule(n), run) for n in ("fc1", "fc2")]
    return model_rows("lenet300-92%", model, (1, 28, 28), run), sum(layers, [])


def big_mlp(width: int, sparsity: float, run: float) -> tuple[list[dict], list[dict]]:
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
    for layer in model[::2]:
        set_mask(layer, "weight", magnitude_keep(layer.weight, sparsity))
    name = f"mlp-{width}x{width}x{width}-{round(sparsity * 100)}%"
    rows = model_rows(name, model, (width,), run)
    return rows, kernel_rows(f"{name}.0", to_inference(copy.deepcopy(model))[0], run)


def _weight_bytes(model: nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _fmt(times: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in times.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller layers, shorter timing")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)  # torch's sparse-is-beta notices
    torch.set_num_threads(1)
    seed_everything(SEED)
    run = 0.05 if args.quick else 0.2
    width = 1024 if args.quick else 4096
    models, layer_rows = lenet(run)
    for s in (0.9, 0.95, 0.98):
        m, k = big_mlp(width, s, run)
        models, layer_rows = models + m, layer_rows + k
    sizes = {f"{width}x{width}": (width, width), "300x784": (300, 784), "100x300": (100, 300)}
    grid = [0.5, 0.7, 0.9, 0.98] if args.quick else [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98]
    sweep_rows = sweep(sizes, grid, run)
    out = {
        "benchmark": "sparse_runtime",
        "seed": SEED,
        "quick": args.quick,
        "min_run_time_s": run,
        "note": "shared 2-core machine (other agents' jobs running): 1 torch thread; each ms "
        f"is the fastest of {ROUNDS} interleaved blocked_autorange medians",
        "crossover": {
            "rule": "smallest sparsity from which SparseLinear beats dense F.linear at all "
            "higher sparsities measured; None = never",
            "by_layer": crossover(sweep_rows),
            "default_min_sparsity": DEFAULT_MIN_SPARSITY,
            "models": model_summary(models),
        },
        "models": models,
        "kernels": layer_rows,
        "sweep": sweep_rows,
        "environment": environment(),
    }
    name = "sparse_runtime-quick.json" if args.quick else "sparse_runtime.json"
    write_json(RESULTS / name, out)
    print(out["crossover"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
