"""Shared machinery of the property-based fuzz tests (``tests/test_fuzz_*.py``).

The property: every input either works (exit 0) or is refused with exit code 2 and one line
on stderr (``brainsurgeon CMD: error: ...``); never a traceback, a hang, another exit code, a
stray temporary file or an output left behind after a refusal.

``run_main(argv)`` calls ``brainsurgeon.cli.main.main`` in-process with a SIGALRM timeout and
captured output; ``judge`` classifies the result; a :class:`Tally` counts inputs tried,
accepted, refused and failed per family. The number of examples comes from
``BRAINSURGEON_FUZZ_EXAMPLES`` (examples per family; default: a few dozen per test, derandomized).
With ``BRAINSURGEON_FUZZ_RECORD=DIR`` a failure is recorded (not raised) so a long run counts
them all, and each family writes ``DIR/FAMILY.json`` at the end of its module.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

RECORD_DIR = os.environ.get("BRAINSURGEON_FUZZ_RECORD")
FAMILY_EXAMPLES = int(os.environ.get("BRAINSURGEON_FUZZ_EXAMPLES", "0") or 0)
TIMEOUT_S = float(os.environ.get("BRAINSURGEON_FUZZ_TIMEOUT", "60"))


class FuzzTimeout(BaseException):
    """Raised by SIGALRM inside the command under test (a BaseException: nothing swallows it)."""


def fuzz_settings(default: int, share: float = 1.0) -> settings:
    """Hypothesis settings: ``default`` examples (derandomized) or ``share`` of the family's
    ``BRAINSURGEON_FUZZ_EXAMPLES`` in a long run."""
    n = max(1, int(FAMILY_EXAMPLES * share)) if FAMILY_EXAMPLES else default
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    )


@dataclass
class Result:
    """One in-process run of the CLI."""

    code: int | None
    stdout: str
    stderr: str
    error: str | None = None  # traceback text, or "hang"


def _alarm(signum, frame):
    raise FuzzTimeout()


def _cache_parser() -> None:
    """Build the CLI's parser once (about 0.1 s per call otherwise): argparse parsers are
    reusable, every ``parse_args`` starts again from the defaults."""
    from brainsurgeon.cli import main as cli

    if getattr(cli.build_parser, "fuzz_cached", False):
        return
    parser = cli.build_parser()

    def cached():
        return parser

    cached.fuzz_cached = True
    cli.build_parser = cached


def run_main(argv: list[str], timeout: float = TIMEOUT_S) -> Result:
    """``brainsurgeon.cli.main.main(argv)`` with stdout/stderr captured, SystemExit turned into
    its code and any other exception (or ``timeout`` seconds) recorded as ``error``."""
    from brainsurgeon.cli.main import main

    _cache_parser()
    out, err = io.StringIO(), io.StringIO()
    code, error = None, None
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    code = main(list(argv))
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except FuzzTimeout:
        error = f"hang: no answer within {timeout:.0f} s"
    except BaseException as exc:  # noqa: BLE001 - the property: nothing escapes
        if isinstance(exc, KeyboardInterrupt):
            raise
        error = "".join(traceback.format_exception(exc)[-3:])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return Result(code, out.getvalue(), err.getvalue(), error)


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders of an interrupted atomic write under ``folder``."""
    bad = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old")):
                bad.append(os.path.relpath(os.path.join(root, name), folder))
    return bad


def judge(
    result: Result,
    *,
    quiet: bool,
    json_out: bool = False,
    work: Path | None = None,
    outputs: tuple[Path, ...] = (),
) -> tuple[str, str]:
    """``("accepted" | "refused" | "failure", detail)`` for one run.

    ``quiet``: stderr must be exactly one line on refusal (else: its last line is the error).
    ``outputs``: paths that did not exist before and must not exist after a refusal.
    ``work``: a folder that must hold no temporary leftovers afterwards.
    """
    if result.error:
        return "failure", result.error.strip().splitlines()[-1][:300] + _where(result.error)
    stray = leftovers(work) if work is not None else []
    if stray:
        return "failure", f"temporary files left behind: {stray[:3]}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if "Traceback" in result.stderr:
        return "failure", "traceback printed: " + (lines[-1] if lines else "")
    if result.code == 0:
        if json_out and result.stdout.strip():
            try:
                json.loads(result.stdout)
            except json.JSONDecodeError:
                return "failure", f"--json stdout is not one JSON document: {result.stdout[:80]!r}"
        return "accepted", ""
    if result.code != 2:
        return "failure", f"exit code {result.code}: {lines[-1] if lines else ''}"
    if not lines:
        return "failure", "exit code 2 without a message"
    if quiet and len(lines) != 1:
        return "failure", f"{len(lines)} lines on stderr: {lines[:3]}"
    last = lines[-1]
    if not last.startswith("brainsurgeon") or "error:" not in last:
        return "failure", f"the last stderr line is not an error line: {last[:200]!r}"
    left = [str(p) for p in outputs if p.exists() and not _kept_for_resume(p, last)]
    if left:
        return "failure", f"refused but left {left}: {last[:200]}"
    return "refused", last[:300]


def _kept_for_resume(path: Path, message: str) -> bool:
    """A recipe that failed after some steps finished keeps them (``OUT/steps`` only) and
    says so: that is the promise "a failed step leaves earlier results intact"."""
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    return names == {"steps"} and "--resume" in message


def _where(text: str) -> str:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("File ") and "brainsurgeon" in line:
            return f" [{line}]"
    return ""


@dataclass
class Tally:
    """Counts of one family; ``check`` raises on a failure unless recording."""

    family: str
    tried: int = 0
    accepted: int = 0
    refused: int = 0
    failures: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    refusal_samples: list[str] = field(default_factory=list)

    def check(self, verdict: tuple[str, str], what: Any) -> None:
        kind, detail = verdict
        self.tried += 1
        if self.tried % 100 == 0:  # a long run cut short still leaves its counts
            self.write()
        if kind == "accepted":
            self.accepted += 1
        elif kind == "refused":
            self.refused += 1
            if len(self.refusal_samples) < 12:
                self.refusal_samples.append(detail)
        else:
            self.failures += 1
            where = detail[detail.rfind(" [File ") :] if " [File " in detail else ""
            head = detail.split("error:", 1)[-1] if detail.startswith("refused but") else detail
            signature = head.split(":")[0][:80] + where
            if len(self.examples) < 40 and all(e["signature"] != signature for e in self.examples):
                self.examples.append({"signature": signature, "detail": detail, "input": what})
            if RECORD_DIR is None:
                raise AssertionError(f"{self.family}: {detail}\ninput: {what!r}")

    def write(self) -> None:
        if RECORD_DIR is None:
            return
        folder = Path(RECORD_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "family": self.family,
            "tried": self.tried,
            "accepted": self.accepted,
            "refused": self.refused,
            "failures": self.failures,
            "failure_examples": self.examples,
            "refusal_samples": self.refusal_samples,
        }
        (folder / f"{self.family}.json").write_text(json.dumps(data, indent=2, default=str))


@contextlib.contextmanager
def example_dir(root: Path, counter: list[int]) -> Any:
    """A fresh working folder per example (the cwd while it runs), removed afterwards."""
    counter[0] += 1
    work = root / f"ex{counter[0]}"
    work.mkdir(parents=True)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)


_TINY: dict[str, Path] = {}


@pytest.fixture(scope="session", name="tiny")
def tiny_fixture(tmp_path_factory) -> dict[str, Path]:
    """:func:`tiny_run`, built once per process (the fuzz modules only read it)."""
    if not _TINY:
        _TINY.update(tiny_run(tmp_path_factory.mktemp("fuzz-tiny")))
    return dict(_TINY)


def tiny_run(root: Path) -> dict[str, Path]:
    """A tiny trained run on digits (1 epoch), a pruned + quantized child and its ``.bsc``."""
    root.mkdir(parents=True, exist_ok=True)
    base, pq = root / "tiny", root / "tiny-pq"
    steps = [
        ["train", "--model", "mlp:64-16-10", "--data", "digits", "--epochs", "1", "--out", base],
        ["prune", base, "--amount", "0.5", "--out", root / "tiny-p"],
        ["quantize", root / "tiny-p", "--method", "kmeans", "--bits", "3", "--out", pq],
        ["export", pq, "--out", root / "tiny.bsc"],
    ]
    for argv in steps:
        res = run_main([str(a) for a in argv] + ["--quiet"], timeout=300)
        if res.code != 0:
            raise RuntimeError(f"fixture step {argv[0]} failed: {res.stderr}{res.error}")
    return {"run": base, "pq": pq, "bsc": root / "tiny.bsc"}


def printable(argv: list[str]) -> str:
    return " ".join(repr(a) if (not a or " " in a) else a for a in argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("import this module from the fuzz tests")
