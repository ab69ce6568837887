"""The source notes' question on a big model: does OBD lose to random pruning on
all-MiniLM-L6-v2's encoder, and does OBD-SD fix it? (issue 14, last bullet)

    PYTHONPATH=src python benchmarks/minilm_study.py [--seeds 0,1] [--rounds 4]
        [--final-sparsity 0.75] [--samples 16] [--rank 8]

For each seed: ``brainsurgeon study obd-sd`` on an imported MiniLM run (bbc-news, 512
calibration sentences, 1,000 evaluation sentences; the run's loss is the cosine to the
original's embeddings, so the fine-tuning after each round is a self-distillation from the
original). Criteria: OBD, OBD-SD, magnitude, random; geometric rounds to
``--final-sparsity`` of the encoder's weights (embeddings kept); ``--samples`` calibration
sentences for the statistics. The 384-wide output Hessian is sketched with ``--rank``
Rademacher columns (``curvature.outputs.MAX_OUTPUT_RANK``; 64 by default, 8 here to fit the
2-core machine: unbiased, noisier). Writes benchmarks/results/minilm_study.json: per seed and
criterion the cosine after each round (pruned and fine-tuned), the final and mean cosine,
and whether OBD loses to random and whether OBD-SD beats OBD.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from brainsurgeon._io import write_json
from brainsurgeon.curvature import outputs
from brainsurgeon.utils import environment

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--final-sparsity", type=float, default=0.75)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--finetune-lr", type=float, default=0.005)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    outputs.MAX_OUTPUT_RANK = args.rank
    from brainsurgeon.cli.main import main as cli
    from brainsurgeon.experiments.study import StudyConfig, study_obd_sd

    run = ROOT / "runs" / "bench" / "minilm-study"
    if not (run / "config.json").exists():
        code = cli(["import", "minilm", "--text", "bbc-news", "--calib", "512", "--val", "64",
                    "--eval", "1000", "--out", str(run), "--quiet", "--force"])  # fmt: skip
        if code:
            raise SystemExit(f"import failed ({code})")
    result = {
        "benchmark": "minilm_study",
        "model": "all-MiniLM-L6-v2 encoder (embeddings kept)",
        "data": "bbc-news: 512 calibration, 1,000 evaluation sentences (import seed 0)",
        "metric": "mean cosine to the original's embeddings on the evaluation sentences",
        "options": vars(args),
        "environment": environment(),
        "seeds": {},
    }
    out = RESULTS / "minilm_study.json"
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = StudyConfig(
            criteria=("obd", "obd-sd", "magnitude", "random"), rounds=args.rounds,
            final_sparsity=args.final_sparsity, finetune_epochs=1,
            finetune_lr=args.finetune_lr, samples=args.samples, sampled_weights=3,
            scatter_weights=500, seed=seed,
        )  # fmt: skip
        began, load = time.perf_counter(), os.getloadavg()
        payload = study_obd_sd(run, cfg, ROOT / "runs" / "bench" / f"minilm-study-s{seed}",
                               device="cpu", force=True, log=print)  # fmt: skip
        crit = payload["criteria"]
        rows = {
            name: {
                "cosine_pruned": [r["accuracy_pruned"] for r in c["rounds"]],
                "cosine": [r["accuracy"] for r in c["rounds"]],
                "final": c["final_accuracy"],
                "mean": c["mean_accuracy"],
                "seconds": c["seconds"],
            }
            for name, c in crit.items()
        }
        result["seeds"][str(seed)] = {
            "criteria": rows,
            "targets": payload["targets"],
            "baseline": payload["baseline"],
            "findings": payload["findings"],
            "seconds": round(time.perf_counter() - began, 1),
            "loadavg_before": list(load),
        }
        write_json(out, result)
    seeds = result["seeds"].values()
    final = {c: [s["criteria"][c]["final"] for s in seeds] for c in ("obd", "obd-sd", "random")}
    result["answer"] = {
        "obd_loses_to_random": [o < r for o, r in zip(final["obd"], final["random"], strict=True)],
        "obd_sd_beats_obd": [s > o for s, o in zip(final["obd-sd"], final["obd"], strict=True)],
        "final_cosine_mean": {c: statistics.mean(v) for c, v in final.items()},
    }
    write_json(out, result)
    print(result["answer"])


if __name__ == "__main__":
    main()
