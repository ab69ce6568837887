"""Kill-and-resume harness: SIGKILL a long command at random moments, resume it with
``--resume`` until it finishes, and compare the result with an uninterrupted run.

A command runs in a child process: forked from the test process (``fork=True``, the default:
no interpreter start-up, so kill points land in the computation) or started fresh with
``python -m brainsurgeon.cli.main``. Checks, for each command:

* no finished unit (round, epoch, cell, step) is lost: the units on disk after a kill are
  still there (or superseded by later ones) when the resumed run starts, and the resumed run
  never writes a unit it found finished (watched while it runs: a new inode or a temp
  folder ``.NAME.*.tmp`` of a finished unit counts as redone);
* nothing half-written is left: after the final run no hidden ``.*.tmp`` / ``.*.old``
  entries and no checkpoint folders remain beside or inside the output;
* the final result is identical: the same file names, byte-identical ``*.safetensors`` and
  ``*.bsc`` files, and equal ``*.json`` once timings (``seconds``, latencies, environment)
  are left out. Every run is written at the same path (then moved), so paths recorded
  inside files agree.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMING_KEYS = ("seconds", "latency_b1_ms", "latency_b64_ms", "environment", "versions")
Units = Callable[[Path], dict[str, int]]


@dataclass
class Outcome:
    """What one harness run found."""

    kills: int = 0
    resumes: int = 0
    finished_early: int = 0
    lost: list[str] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    units_seen: int = 0

    @property
    def identical(self) -> bool:
        return not self.differences

    @property
    def ok(self) -> bool:
        return not (self.lost or self.redone or self.leftovers or self.differences)

    def summary(self) -> dict[str, Any]:
        return {
            "kills": self.kills,
            "resumes": self.resumes,
            "finished_before_kill": self.finished_early,
            "units_seen_at_kills": self.units_seen,
            "lost": self.lost,
            "redone": self.redone,
            "leftovers": self.leftovers,
            "identical": self.identical,
        }


class Child:
    """One run of the CLI in a child process (forked, or a fresh interpreter)."""

    def __init__(self, argv: list[str], log: Path, fork: bool = True) -> None:
        self.fork = fork
        if fork:
            self.pid = os.fork()
            if self.pid == 0:  # the child: run the command, never return into pytest
                code = 1
                try:
                    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    sys.stdout = open(1, "w", closefd=False)  # not pytest's capture
                    sys.stderr = open(2, "w", closefd=False)
                    from brainsurgeon.cli.main import main

                    code = main(argv)
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            self.rc: int | None = None
        else:
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            cmd = [sys.executable, "-m", "brainsurgeon.cli.main", *argv]
            with open(log, "w") as fh:
                self.proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)

    def poll(self) -> int | None:
        if not self.fork:
            return self.proc.poll()
        if self.rc is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.rc = os.waitstatus_to_exitcode(status)
        return self.rc

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid if self.fork else self.proc.pid, signal.SIGKILL)
        while self.poll() is None:
            time.sleep(0.001)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the command did not finish within {timeout} s")
            time.sleep(0.005)
        return self.poll()  # type: ignore[return-value]


def run_whole(argv: list[str], log: Path, *, fork: bool = True, timeout: float = 600) -> float:
    """Run ``argv`` to the end; its wall time (the scale of the kill moments)."""
    start = time.monotonic()
    rc = Child(argv, log, fork).wait(timeout)
    if rc != 0:
        raise AssertionError(f"exit {rc}: {log.read_text()[-2000:]}")
    return time.monotonic() - start


def _watch(child: Child, out: Path, units: Units, done: dict[str, int], stop_at, marker=None):
    """Poll ``child`` until it exits (or ``stop_at``, then kill it; with ``marker`` seconds,
    kill that long after the first unit it finishes instead); the finished units that it
    wrote again."""
    redone = set()
    while child.poll() is None:
        if stop_at is not None and time.monotonic() >= stop_at:
            child.kill()
            break
        now = units(out)
        redone |= {k for k, inode in now.items() if k in done and inode != done[k]}
        if marker is not None and any(k not in done and v != -1 for k, v in now.items()):
            stop_at, marker = time.monotonic() + marker, None
        time.sleep(0.002)
    return redone


def kill_and_resume(
    argv: list[str],
    out: Path,
    units: Units,
    kill_after: list[float],
    *,
    fork: bool = True,
    timeout: float = 600,
    log_dir: Path | None = None,
    result: Outcome | None = None,
    markers: bool = False,
) -> Outcome:
    """Start ``argv`` (its ``--out`` is ``out``), SIGKILL attempt ``i`` ``kill_after[i]``
    seconds after it starts (``markers``: every other attempt is killed just after the next
    unit it finishes, ``kill_after[i] % 0.05`` s later), resume with ``--resume`` after each
    kill; once the moments are used up (or an attempt finishes first) run it to the end.
    Adds to ``result``."""
    log_dir = log_dir or out.parent
    result = result or Outcome()
    done: dict[str, int] = {}
    finished = False
    for i, delay in enumerate(kill_after):
        args = argv if i == 0 else [*argv, "--resume"]
        result.resumes += i > 0
        _check_kept(out, units, done, result)
        log = log_dir / f"attempt-{i:03d}.log"
        child = Child(args, log, fork)
        # odd attempts: at a progress marker (just after the next finished unit), with jitter
        when, marker = (None, delay % 0.05) if markers and i % 2 else (delay, None)
        stop_at = None if when is None else time.monotonic() + when
        result.redone += sorted(_watch(child, out, units, done, stop_at, marker))
        rc = child.wait(timeout)
        if rc not in (-signal.SIGKILL, 128 + signal.SIGKILL):
            if rc != 0:
                raise AssertionError(f"attempt {i} exited {rc}: {log.read_text()[-2000:]}")
            result.finished_early += 1
            finished = True
            break
        result.kills += 1
        done = {k: inode for k, inode in units(out).items() if inode != -1}  # finished ones
        result.units_seen += len(done)
    if not finished:
        result.resumes += 1
        _check_kept(out, units, done, result)
        child = Child([*argv, "--resume"], log_dir / "final.log", fork)
        result.redone += sorted(_watch(child, out, units, done, None))
        if child.wait(timeout) != 0:
            raise AssertionError((log_dir / "final.log").read_text()[-2000:])
    result.leftovers += leftovers(out)
    return result


def kill_scenarios(
    argv: list[str], root: Path, units: Units, seconds: float, kills: int, seed: int, **kw
) -> tuple[Outcome, list[Path]]:
    """Fresh runs at ``root/run/out``, each killed at moments uniform in ``[0, seconds]`` and
    resumed until it finishes, until ``kills`` kills happened. Each finished run is moved to
    ``root/done-NN/out`` (so every run writes the same paths into its files, as the
    reference run should: see :func:`reference_run`); returns the moved folders."""
    rng = random.Random(seed)
    result, outs = Outcome(), []
    while result.kills < kills:
        folder = root / "run"
        folder.mkdir(parents=True)
        out = folder / "out"
        moments = [rng.uniform(0.0, seconds) for _ in range(kills - result.kills)]
        kill_and_resume([*argv, "--out", str(out)], out, units, moments, result=result, **kw)
        done = root / f"done-{len(outs):02d}"
        folder.rename(done)
        outs.append(done / "out")
    return result, outs


def reference_run(argv: list[str], root: Path, **kw) -> tuple[Path, float]:
    """The uninterrupted run, written at ``root/run/out`` and moved to ``root/reference``;
    ``(its folder, its wall time)``."""
    (root / "run").mkdir(parents=True)
    seconds = run_whole([*argv, "--quiet", "--out", str(root / "run" / "out")],
                        root / "reference.log", **kw)  # fmt: skip
    (root / "run").rename(root / "reference")
    return root / "reference" / "out", seconds


def _check_kept(out: Path, units: Units, done: dict[str, int], result: Outcome) -> None:
    """Every unit finished before the last kill is still on disk (or superseded)."""
    before = units(out)
    result.lost += sorted(k for k in done if k not in before and not _superseded(k, before))


def _superseded(unit: str, now: dict[str, int]) -> bool:
    """An epoch checkpoint replaced by a later epoch of the same fit (only the newest is kept)."""
    head, _, tail = unit.rpartition("/")
    if not tail.startswith("epoch-"):
        return False
    return any(k.startswith(head + "/epoch-") and k > unit for k in now)


def leftovers(out: Path) -> list[str]:
    """Hidden temp entries beside or under ``out`` and checkpoint folders inside it."""
    found = [
        str(p.relative_to(out.parent))
        for p in [*out.parent.iterdir(), *out.rglob("*")]
        if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.endswith(".old"))
    ]
    found += [str(out / d) for d in ("epochs", "steps") if (out / d).exists()]
    if (out / "rounds").is_dir():
        found += [str(p) for p in (out / "rounds").rglob("*.safetensors")]
    return found


def compare_outputs(a: Path, b: Path) -> list[str]:
    """Differences between two finished output folders (see the module docstring)."""
    names_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    names_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    diffs = [f"files differ: {sorted(set(names_a) ^ set(names_b))}"] if names_a != names_b else []
    for name in sorted(set(names_a) & set(names_b)):
        pa, pb = a / name, b / name
        if name.endswith((".safetensors", ".bsc")) and pa.read_bytes() != pb.read_bytes():
            diffs.append(f"{name}: bytes differ")
        elif name.endswith(".json"):
            ja = _strip(json.loads(pa.read_text()), str(a))
            jb = _strip(json.loads(pb.read_text()), str(b))
            if ja != jb:
                diffs.append(f"{name}: {_first_difference(ja, jb)}")
    return diffs


def _strip(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip(v, root)
            for k, v in value.items()
            if k not in TIMING_KEYS and not k.endswith("_seconds")
        }
    if isinstance(value, list):
        return [_strip(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<OUT>")
    return value


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where}: {str(a)[:80]} != {str(b)[:80]}"


def kill_times(seconds: float, count: int, seed: int) -> list[float]:
    """``count`` moments uniform in ``[0, seconds]`` (seeded)."""
    rng = random.Random(seed)
    return [rng.uniform(0.0, seconds) for _ in range(count)]


def inode_units(pattern_dirs: list[str], *, need: str | None = None) -> Units:
    """Units = entries matching the globs (relative to ``out``), with their inodes; a hidden
    temp folder ``.NAME.XXXX.tmp`` of an atomic write counts as a (new) write of ``NAME``.
    ``need``: a file a folder must hold to count as finished."""

    def units(out: Path) -> dict[str, int]:
        for _ in range(100):  # folders vanish while the child runs: look again
            try:
                return scan(out)
            except FileNotFoundError:
                time.sleep(0.001)
        return scan(out)

    def scan(out: Path) -> dict[str, int]:
        found: dict[str, int] = {}
        for pattern in pattern_dirs:
            for p in out.glob(pattern):
                name = str(p.relative_to(out))
                if need is not None and p.is_dir() and not (p / need).exists():
                    continue
                try:
                    found[name] = p.stat().st_ino
                except FileNotFoundError:
                    continue
            for p in out.glob(_hidden(pattern)):
                real = p.name[1:].rsplit(".", 2)[0]
                found[str(p.parent.relative_to(out) / real)] = -1  # being written now
        return found

    return units


def _hidden(pattern: str) -> str:
    head, _, tail = pattern.rpartition("/")
    return f"{head}/.{tail}.*.tmp" if head else f".{tail}.*.tmp"
