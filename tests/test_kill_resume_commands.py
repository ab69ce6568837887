"""SIGKILL every long command at random moments, resume it with ``--resume`` until it
finishes, and check against an uninterrupted run with the same seed (tests/killharness.py):
no finished round / epoch / cell / step lost or redone, nothing half-written, identical
weights, masks, codebooks and metrics. The default run kills each command a few times; the
``slow`` one at >= 20 moments per command and writes the counts to
``benchmarks/results/kill_resume.json``."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest

import killharness as kh

RECIPE = """\
name: tiny
seed: 3
data: digits
model: mlp:64-32-10
steps:
  - train: {epochs: 3, lr: 0.05}
  - prune: {criterion: magnitude, amount: 0.7, schedule: iterative, rounds: 2,
            finetune_epochs: 1}
  - quantize: {method: kmeans, bits: 3, finetune_epochs: 2}
  - finetune: {epochs: 1, lr: 0.002}
report: false
"""


def commands(run: Path, recipe: Path) -> dict[str, tuple[list[str], kh.Units]]:
    """name -> (argv without --out, how to count its finished units)."""
    epochs = kh.inode_units(["epochs/fit-*/epoch-*"])
    return {
        "train": (
            ["train", "--model", "mlp:64-32-10", "--data", "digits", "--epochs", "4",
             "--seed", "2"],
            epochs,
        ),
        "prune": (
            ["prune", str(run), "--criterion", "magnitude", "--amount", "0.8", "--schedule",
             "iterative", "--rounds", "3", "--finetune-epochs", "1", "--seed", "1"],
            kh.inode_units(["rounds/??"], need="config.json"),
        ),
        "quantize": (
            ["quantize", str(run), "--method", "kmeans", "--bits", "3", "--finetune-epochs", "4",
             "--seed", "1"],
            epochs,
        ),
        "distill": (
            ["distill", "--teacher", str(run), "--student", "mlp:64-24-10", "--epochs", "4",
             "--seed", "2"],
            epochs,
        ),
        "compare": (
            ["compare", str(run), "--criteria", "random,magnitude", "--sparsities", "0.8",
             "--finetune-epochs", "1", "--samples", "128"],
            kh.inode_units(["cells/*.json"]),
        ),
        "study": (
            ["study", "obd-sd", str(run), "--criteria", "magnitude", "--rounds", "2",
             "--final-sparsity", "0.8", "--samples", "128", "--sampled-weights", "2"],
            kh.inode_units(["cells/*.json"]),
        ),
        "recipe": (
            ["run", str(recipe), "--device", "cpu"],
            kh.inode_units(["steps/??", "steps/start", "steps/??.epochs/fit-*/epoch-*"]),
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def setup(trained_run, tmp_path_factory):
    import brainsurgeon.cli.main as cli

    cli.build_parser()  # import every command before forking: kill points land in the work
    import brainsurgeon.distillation  # noqa: F401
    import brainsurgeon.experiments  # noqa: F401
    import brainsurgeon.quantization  # noqa: F401
    import brainsurgeon.recipes  # noqa: F401

    recipe = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    recipe.write_text(RECIPE)
    return commands(trained_run, recipe)


def _check(name, setup, tmp_path, kills: int, seed: int, markers: bool = True) -> kh.Outcome:
    argv, units = setup[name]
    whole, seconds = kh.reference_run(argv, tmp_path)
    outcome, outs = kh.kill_scenarios(argv, tmp_path, units, seconds, kills, seed, markers=markers)
    for out in outs:
        outcome.differences += kh.compare_outputs(whole, out)
    return outcome


@pytest.mark.parametrize("name", ["train", "quantize", "distill", "compare", "study", "recipe"])
def test_killed_command_resumes_to_the_same_result(name, setup, tmp_path):
    kills = 1 if name in ("study", "compare") else 2  # their plots make every finish slow
    outcome = _check(name, setup, tmp_path, kills=kills, seed=0)
    assert outcome.ok, outcome.summary() | {"differences": outcome.differences}
    assert outcome.kills + outcome.finished_early >= 1


COMMANDS = ("prune", "quantize", "distill", "compare", "study", "recipe", "train")


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_twenty_kill_points_per_command(name, setup, tmp_path):
    """One command killed at 20 moments; its row is merged into kill_resume.json (select
    commands with ``-k``)."""
    outcome = _check(name, setup, tmp_path / name, kills=20, seed=100 + COMMANDS.index(name))
    row = outcome.summary() | {"differences": outcome.differences}
    path = Path(__file__).parents[1] / "benchmarks" / "results" / "kill_resume.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(path.read_text()) if path.exists() else {"commands": {}}
    record["commands"][name] = row | {"loadavg": os.getloadavg()}
    record.update(
        machine=platform.machine(),
        cpu_count=os.cpu_count(),
        kill_times="uniform in [0, T_uninterrupted] per attempt, seeded 100 + the command's "
        "index in COMMANDS",
    )
    path.write_text(json.dumps(record, indent=2) + "\n")
    assert not (row["lost"] or row["redone"] or row["leftovers"]), row
    assert row["identical"], row
