"""``brainsurgeon report``: one self-contained HTML file for a run or an experiment directory.

The page holds the model summary, a per-layer table (params, nonzeros, bits, bytes, FLOPs),
test accuracy before (the parent run, when recorded) and after, size, latency, the 45 nm
energy estimate, and every plot (*.png) found under the directory, embedded as base64 so the
single file can be mailed or archived.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command, add_common, emit, say

EPILOG = """\
examples:
  brainsurgeon report runs/lenet-pruned                 # writes runs/lenet-pruned/report.html
  brainsurgeon report results/compare --out compare.html
  brainsurgeon report runs/lenet-pruned --sram 512KB --no-latency --json"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "report", "self-contained HTML report of a run or experiment folder", __doc__, EPILOG
    )
    p.add_argument(
        "target",
        metavar="RUN_OR_DIR",
        help="a run directory, a compressed .bsc file, or the --out of compare / study / "
        "sensitivity / run",
    )
    p.add_argument(
        "--out", default=None, help="HTML file to write (default: RUN_OR_DIR/report.html)"
    )
    p.add_argument(
        "--sram",
        default=None,
        help="on-chip memory budget for the energy estimate, e.g. 512KB, 2MB",
    )
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    add_common(p, seed=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import RunDirError
    from ..metrics.energy import parse_size
    from ..reports import find_plots, write_report

    sram = parse_size(args.sram) if args.sram is not None else None
    from ..container import is_compressed_file

    target = Path(args.target)
    if not target.is_dir() and not is_compressed_file(target):
        raise RunDirError(
            f"RUN_OR_DIR {target} is not an existing directory or .bsc file; pass a run "
            "directory, a compressed model file or the --out folder of compare / study / "
            "sensitivity / run"
        )
    say(args, f"building the report for {target} ...")
    out = write_report(target, args.out, sram=sram, latency=not args.no_latency)
    plots = len(find_plots(target)) if target.is_dir() else 0
    payload = {"report": str(out), "plots": plots, "bytes": out.stat().st_size}
    emit(
        args,
        payload,
        f"wrote {out} ({payload['bytes']:,} bytes, {payload['plots']} plots); open it in a browser",
    )
    return 0
