"""SparseGPT speed: our solver against a transcription of the reference ``fasterprune``.

    python benchmarks/solver_speed.py [--quick] [--rows 1024] [--cols 1024] [--repeats 7]

The reference is IST-DASLab's ``sparsegpt.py`` (``SparseGPT.fasterprune``: dead inputs,
``percdamp`` damping, Cholesky of ``H^-1`` upper, 128-column blocks with lazy batch updates,
the mask chosen per block by ``w^2 / d^2``, N:M per group of M), transcribed below as a pure
function of ``(W, H)``. Both run on one thread on the same layer (``W`` rows x cols, ``H = 2
X X^T / N`` of correlated inputs), timed with ``torch.utils.benchmark`` one call at a time
and interleaved (the order alternates), so the ratio of each pair is measured side by side
on a shared machine; the median pair ratio is reported. The reconstruction errors
``||(W - W') X^T||^2`` must agree (the masks differ only in ties and the last few entries of
a block): beyond a relative 1e-3 the script exits 1. Writes
``benchmarks/results/solver_speed.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.utils import benchmark

from brainsurgeon._io import write_json
from brainsurgeon.solvers import sparsegpt
from brainsurgeon.utils import environment

RESULTS = Path(__file__).resolve().parent / "results"
RECON_RTOL = 1e-3  # reconstruction errors must agree this closely (exit 1 otherwise)


def reference_fasterprune(W, H, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01):
    """IST-DASLab ``SparseGPT.fasterprune`` (quantizer and GPU bookkeeping left out)."""
    W = W.clone().float()
    H = H.clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Losses = torch.zeros(rows)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    mask = None
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            if mask is not None:
                mask1 = mask[:, i1:i2]
            else:
                tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = (
                    W1[:, i : (i + prunem)] ** 2
                    / (torch.diag(Hinv1)[i : (i + prunem)].reshape((1, -1))) ** 2
                )
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        Losses += torch.sum(Losses1, 1) / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def problem(rows: int, cols: int, samples: int, seed: int):
    """A layer ``W`` (rows, cols) and ``H = 2 X^T X / N`` of correlated inputs ``X`` (N, cols)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(samples, cols, generator=g) @ (
        torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g) / cols**0.5
    )
    W = torch.randn(rows, cols, generator=g) / cols**0.5
    return W, 2 * X.T @ X / samples, X


def recon_error(W, W_new, X) -> float:
    return float(((W - W_new) @ X.T).pow(2).sum())


def compare(W, H, X, case: dict, repeats: int) -> dict:
    """Interleaved single-call timings of ours and the reference; median pair ratio."""
    nm = case.get("nm")
    ref_args = (case.get("sparsity", 0.0), *(nm or (0, 0)))
    ours = benchmark.Timer(
        "f(W, H, s, nm)",
        globals={"f": sparsegpt, "W": W, "H": H, "s": case.get("sparsity"), "nm": nm},
        num_threads=1,
    )
    ref = benchmark.Timer(
        "f(W, H, *a)",
        globals={"f": reference_fasterprune, "W": W, "H": H, "a": ref_args},
        num_threads=1,
    )
    ours.timeit(1), ref.timeit(1)  # warm-up
    t_ours, t_ref = [], []
    for r in range(repeats):
        first, second = (ours, ref) if r % 2 == 0 else (ref, ours)
        a, b = first.timeit(1).mean, second.timeit(1).mean
        (t_ours, t_ref)[0 if first is ours else 1].append(a)
        (t_ours, t_ref)[0 if second is ours else 1].append(b)
    ratios = [o / f for o, f in zip(t_ours, t_ref, strict=True)]
    new, _ = sparsegpt(W, H, case.get("sparsity"), nm)
    ref_new = reference_fasterprune(W, H, *ref_args)
    e_ours, e_ref = recon_error(W, new, X), recon_error(W, ref_new, X)
    return {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in case.items()},
        "seconds_ours_median": statistics.median(t_ours),
        "seconds_reference_median": statistics.median(t_ref),
        "ratio_ours_over_reference_median": statistics.median(ratios),
        "ratios": [round(x, 4) for x in ratios],
        "recon_error_ours": e_ours,
        "recon_error_reference": e_ref,
        "recon_error_relative_difference": (e_ours - e_ref) / e_ref,
        "recon_error_equal": abs(e_ours - e_ref) <= RECON_RTOL * e_ref,
        "sparsity_ours": float((new == 0).float().mean()),
        "sparsity_reference": float((ref_new == 0).float().mean()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256, 3 repeats")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows, cols, repeats = (256, 256, 3) if args.quick else (args.rows, args.cols, args.repeats)
    W, H, X = problem(rows, cols, args.samples, args.seed)
    cases = [{"sparsity": 0.5}, {"nm": (2, 4)}]
    results = []
    for case in cases:
        results.append(compare(W, H, X, case, repeats))
        print(results[-1], file=sys.stderr, flush=True)
    path = RESULTS / ("solver_speed_quick.json" if args.quick else "solver_speed.json")
    write_json(
        path,
        {
            "benchmark": "solver_speed",
            "solver": "sparsegpt",
            "shape": [rows, cols],
            "calibration_samples": args.samples,
            "seed": args.seed,
            "repeats": repeats,
            "threads": 1,
            "note": "ratio < 1: ours is faster; measured in one run on a shared machine",
            "results": results,
            "environment": environment(),
        },
    )
    print(f"wrote {path}", file=sys.stderr)
    bad = [r for r in results if not r["recon_error_equal"]]
    for r in bad:
        print(f"reconstruction errors differ: {r}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
