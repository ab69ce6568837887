"""How much calibration text the layer-wise solvers need on all-MiniLM-L6-v2.

    PYTHONPATH=src python benchmarks/minilm_calibration.py [--calib 128,512,2048,8192]
        [--methods sparsegpt-50,sparsegpt-2:4,gptq-4,gptq-4-g64,gptq-4-g64-act] [--damp 0.01]

For each method and calibration size: mean cosine to the original's embeddings on the 2,000
held-out bbc-news sentences of benchmarks/minilm.py (same seed, same splits; calibration
text past the benchmark's 512 sentences comes from a further disjoint split), the solver's
wall time and the calibration tokens. Writes benchmarks/results/minilm_calibration.json
row by row (``--resume`` keeps finished rows).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

import brainsurgeon as bs
from brainsurgeon._io import write_json
from brainsurgeon.data.fetch import fetch_minilm
from brainsurgeon.models.hf import load_pretrained
from brainsurgeon.quantization import quant_config
from brainsurgeon.utils import environment

sys.path.insert(0, str(Path(__file__).parent))
from minilm_eval import embed, load_splits  # noqa: E402

from brainsurgeon.training.evaluation import embedding_agreement  # noqa: E402

RESULTS = Path(__file__).parent / "results"
EMB = ("backbone.embeddings.*",)


def compress(method: str, model, data, calib: int, damp: float) -> None:
    opts = {"method": "sparsegpt", "damp": damp}
    if method.startswith("sparsegpt"):
        scheme = (
            {"scheme": "nm", "nm": (2, 4)}
            if method.endswith("2:4")
            else {"scheme": "per-layer", "amount": float(method.split("-")[1]) / 100}
        )
        cfg = bs.PruneConfig(criterion="layerwise-obs", criterion_options=opts, exclude=EMB,
                             samples=calib, batch_size=32, **scheme)  # fmt: skip
        bs.prune(model, cfg, data, loss="cosine", progress=False)
        return
    if method.startswith("gptq"):
        parts = method.split("-")  # gptq-4 | gptq-4-g64 | gptq-4-g64-act | gptq-4-act
        group = next((int(p[1:]) for p in parts[2:] if p.startswith("g")), 0)
        cfg = quant_config("gptq", bits=int(parts[1]), exclude=EMB, samples=calib, damp=damp,
                           group_size=group, act_order="act" in parts[2:])  # fmt: skip
        bs.quantize(model, cfg, data, loss="cosine")
        return
    raise SystemExit(f"unknown method {method!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--calib", default="128,512,2048,8192")
    p.add_argument("--methods", default="sparsegpt-50,sparsegpt-2:4,gptq-4,gptq-4-g64")
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "minilm_calibration.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(c) for c in args.calib.split(",")]
    folder = fetch_minilm(progress=False)
    original = load_pretrained(folder, max_length=128)
    for q in original.parameters():
        q.requires_grad_(False)
    split = {"eval": 2000, "val": 128, "calib": 512, "clf": 3000}
    split["extra"] = max(0, max(sizes) - 512)
    splits = load_splits(original, folder, split)
    out = Path(args.out)
    result = {
        "benchmark": "minilm_calibration",
        "model": "all-MiniLM-L6-v2",
        "eval": "2,000 held-out bbc-news sentences (benchmarks/minilm.py splits, seed 0)",
        "damp": args.damp,
        "threads": args.threads,
        "environment": environment(),
        "rows": [],
    }
    if args.resume and out.exists():
        result["rows"] = json.loads(out.read_text())["rows"]
    done = {(r["method"], r["calibration"], r.get("damp")) for r in result["rows"]}
    for method in args.methods.split(","):
        for calib in sizes:
            if (method, calib, args.damp) in done:
                continue
            data = splits.bundle(calib)
            model = copy.deepcopy(original)
            load = os.getloadavg()
            start = time.perf_counter()
            compress(method, model, data, calib, args.damp)
            seconds = time.perf_counter() - start
            z = embed(model, splits.x["eval"])
            agree = embedding_agreement(z, splits.y["eval"])
            row = {
                "method": method,
                "calibration": calib,
                "tokens": int(data.train.x[:, 1].sum()),
                "damp": args.damp,
                "cosine": agree["cosine"],
                "cosine_min": agree["cosine_min"],
                "top10": agree["top10"],
                "seconds": round(seconds, 1),
                "loadavg_before": list(load),
            }
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
            write_json(out, result)


if __name__ == "__main__":
    main()
