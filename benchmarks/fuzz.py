"""The long fuzz run: every family with N examples; counts to ``benchmarks/results/fuzz.json``.

    PYTHONPATH=src python benchmarks/fuzz.py --examples 10000            # all four families
    PYTHONPATH=src python benchmarks/fuzz.py --examples 500 --family cli

Each family is its test module (``tests/test_fuzz_FAMILY.py``) run by pytest in one process
with ``BRAINSURGEON_FUZZ_EXAMPLES=N`` (examples per family, shared among the module's
property tests) and ``BRAINSURGEON_FUZZ_RECORD``: failures are counted, not raised, so the
run goes on. The JSON holds per family: inputs tried, accepted, clean refusals, failures and
one input per distinct failure, with the seconds taken, the machine and its load.
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

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["cli", "recipes", "data", "files", "text"]


def run_family(family: str, examples: int, record: Path, timeout: float) -> dict:
    """One family's module under pytest; returns its counts (or why there are none)."""
    env = {
        **os.environ,
        "BRAINSURGEON_FUZZ_EXAMPLES": str(examples),
        "BRAINSURGEON_FUZZ_RECORD": str(record),
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:xdist",
        "-q",
        "-o",
        "addopts=",
        "-p",
        "no:cacheprovider",
        str(ROOT / "tests" / f"test_fuzz_{family}.py"),
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
        status = {"pytest_exit": proc.returncode, "pytest_summary": tail}
    except subprocess.TimeoutExpired:  # the counts so far were written every 100 inputs
        status = {"pytest_exit": None, "pytest_summary": [f"stopped after {timeout:.0f} s"]}
    seconds = round(time.perf_counter() - start, 1)
    path = record / f"{family}.json"
    counts = json.loads(path.read_text()) if path.exists() else {"family": family}
    return {**counts, **status, "examples_asked": examples, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--examples", type=int, default=10000, help="examples per family")
    p.add_argument("--family", action="append", choices=FAMILIES, help="default: all five")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz.json"))
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per family")
    args = p.parse_args(argv)
    results = {}
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.family or FAMILIES:
            results[family] = run_family(family, args.examples, Path(tmp), args.timeout)
            r = results[family]
            print(
                f"{family}: tried {r.get('tried')} accepted {r.get('accepted')} refused "
                f"{r.get('refused')} failures {r.get('failures')} ({r['seconds']} s)",
                flush=True,
            )
            _write(out, old, results)
    return 0 if all(r.get("failures") == 0 for r in results.values()) else 1


def _write(out: Path, old: dict, results: dict) -> None:
    payload = {
        "families": {**old.get("families", {}), **results},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "loadavg": os.getloadavg(),
        "threads": 1,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
