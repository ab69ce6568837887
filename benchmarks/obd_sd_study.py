"""Benchmark: the OBD-SD study (17 rounds) on LeNet-300-100 / MNIST.

Acceptance: under 15 minutes on this machine, with the findings in numbers (does OBD lose to
random pruning; does OBD-SD fix it). Writes benchmarks/results/obd_sd_study.json (timing,
findings, per-round accuracy, seed, environment); plots and summary.md go to
benchmarks/results/obd_sd_study/. ``--quick``: 3 rounds on the digits data.

    python benchmarks/obd_sd_study.py [--quick] [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from brainsurgeon._io import write_json
from brainsurgeon.experiments.study import StudyConfig, study_obd_sd
from brainsurgeon.utils import environment

sys.path.insert(0, str(Path(__file__).parent))
from compare import RESULTS, base_run  # noqa: E402  (the same cached trained run)

TARGET_SECONDS = 900


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--run", default=None, help="use this trained run instead")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run = base_run(args)
    if args.quick:
        config = StudyConfig(rounds=3, final_sparsity=0.9, samples=200, seed=args.seed)
    else:
        config = StudyConfig(
            rounds=17, final_sparsity=0.98, finetune_epochs=1, samples=1000, seed=args.seed
        )
    out = RESULTS / ("obd_sd_study-quick" if args.quick else "obd_sd_study")
    start = time.perf_counter()
    payload = study_obd_sd(run, config, out, device="cpu", force=True, log=print)
    seconds = time.perf_counter() - start
    result = {
        "benchmark": "obd_sd_study",
        "quick": args.quick,
        "run": str(run),
        "seed": args.seed,
        "config": config.to_dict(),
        "seconds": round(seconds, 1),
        "target_seconds": TARGET_SECONDS,
        "passed": seconds < TARGET_SECONDS,
        "findings": payload["findings"],
        "accuracy_per_round": {
            c: [r["accuracy"] for r in v["rounds"]] for c, v in payload["criteria"].items()
        },
        "accuracy_right_after_pruning": {
            c: [r["accuracy_pruned"] for r in v["rounds"]] for c, v in payload["criteria"].items()
        },
        "sparsity_per_round": payload["targets"],
        "seconds_per_criterion": {c: v["seconds"] for c, v in payload["criteria"].items()},
        "note": "2-core machine shared with other engineers during the run: times are inflated",
        "load_average": os.getloadavg(),
        "environment": environment(),
    }
    write_json(RESULTS / ("obd_sd_study-quick.json" if args.quick else "obd_sd_study.json"), result)
    print(f"study: {seconds:.0f} s (target < {TARGET_SECONDS} s)")
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
