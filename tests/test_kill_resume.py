"""Kill -9 in the middle of an iterative prune, resume, and end exactly where an uninterrupted
run ends: no finished round lost, the final weights byte-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli

ARGS = [
    "--criterion", "magnitude", "--amount", "0.8", "--schedule", "iterative", "--rounds", "4",
    "--finetune-epochs", "1", "--seed", "1", "--quiet",
]  # fmt: skip


def _popen(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "brainsurgeon.cli.main", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after(proc: subprocess.Popen, marker, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as ``marker`` exists; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if marker.exists():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("the run neither wrote its checkpoint nor finished in time")


@pytest.mark.parametrize("after_round", [1, 2])
def test_killed_prune_resumes_to_the_same_weights(after_round, trained_run, tmp_path):
    whole = tmp_path / "whole"
    run_cli("prune", str(trained_run), *ARGS, "--out", str(whole), check=True)
    cut = tmp_path / "cut"
    proc = _popen("prune", str(trained_run), *ARGS, "--out", str(cut))
    killed = _kill_after(proc, cut / "rounds" / f"{after_round:02d}" / "model.safetensors")
    if killed:
        assert not (cut / "config.json").exists()  # the final run was not half-written
        leftovers = [p.name for p in (cut / "rounds").iterdir() if p.name.startswith(".")]
        kept = sorted(p.name for p in (cut / "rounds").iterdir() if not p.name.startswith("."))
        assert kept[:after_round] == [f"{k:02d}" for k in range(1, after_round + 1)], leftovers
    run_cli("prune", str(trained_run), *ARGS, "--out", str(cut), "--resume", check=True)
    a = (whole / "model.safetensors").read_bytes()
    b = (cut / "model.safetensors").read_bytes()
    assert a == b
