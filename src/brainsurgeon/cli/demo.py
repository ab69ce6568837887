"""``brainsurgeon demo``: train a small model on the embedded digits, compress it, compare.

Runs the recipe shipped with the package (``brainsurgeon run`` on ``recipes/demo.yaml``).
Prints a before/after table (accuracy, nonzeros, the file's bytes on disk, FLOPs, latency,
all measured on the model as read back from its ``.bsc`` file) and leaves run directories and
OUT/model.bsc under --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import add_command, add_common, emit, say, table

EPILOG = """\
examples:
  brainsurgeon demo                      # ~1 minute on 2 CPU cores, writes runs/demo
  brainsurgeon demo --out /tmp/demo --json
then look inside:  brainsurgeon inspect runs/demo/compressed"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "demo", "train, compress and compare a small model on digits", __doc__, EPILOG
    )
    p.add_argument(
        "--out",
        default="runs/demo",
        help="where to leave the runs (default: runs/demo; a free name is picked "
        "if it exists and --force is not given)",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out")
    add_common(p)
    p.set_defaults(func=run)


def free_path(path: Path, force: bool) -> Path:
    if path.name in ("", ".", ".."):
        from ..errors import ConfigError

        raise ConfigError(f"--out must name a folder, got {str(path)!r}; e.g. --out runs/demo")
    if force or not path.exists():
        return path
    k = 1
    while path.with_name(f"{path.name}-{k}").exists():
        k += 1
    return path.with_name(f"{path.name}-{k}")


def comparison_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    rows = []
    for key, label, scale in [
        ("accuracy", "test accuracy %", 100),
        ("nonzeros", "nonzero weights", 1),
        ("file_bytes", "file bytes (on disk)", 1),
        ("nonzero_flops", "nonzero FLOPs", 1),
        ("flops", "dense FLOPs", 1),
        ("latency_b1_ms", "latency b=1 ms (as loaded)", 1),
        ("latency_b64_ms", "latency b=64 ms (as loaded)", 1),
    ]:
        b, a = before[key] * scale, after[key] * scale
        ratio = f"{b / a:.2f}x" if a else "-"
        rows.append([label, b, a, ratio])
    return table(rows, ["", "before", "after", "before/after"])


def run(args: argparse.Namespace) -> int:
    out = free_path(Path(args.out), args.force)
    start = time.perf_counter()
    from ..recipes import demo_recipe_path, run_recipe

    say(args, f"running the demo recipe {demo_recipe_path()} into {out}")
    result = run_recipe(
        demo_recipe_path(),
        out,
        force=args.force,
        device=args.device,
        progress=not args.quiet,
        seed=args.seed,
    )
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = "\n".join(
        [
            comparison_table(result["before"], result["after"]),
            "accuracy and latency are those of the model read back from its .bsc file",
            f"\nruns written under {out} ({result['seconds']} s); the compressed file: "
            f"{result['final_file']}. Next:",
            f"  brainsurgeon inspect {result['final_run']}",
            f"  brainsurgeon report {out}"
            if result.get("report") is None
            else f"  open {result['report']}",
        ]
    )
    emit(args, result, text)
    return 0
