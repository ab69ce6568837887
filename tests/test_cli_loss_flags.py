"""--loss / --task-loss on the compressing commands: a bad name is one line, exit 2."""

import pytest

from conftest import run_cli

COMMANDS = [
    ["train", "--loss", "msee", "--out", "never"],
    ["quantize", "runs/none", "--loss", "msee", "--out", "never"],
    ["factorize", "runs/none", "--energy", "0.9", "--loss", "msee", "--out", "never"],
    [
        "distill",
        "--teacher",
        "runs/none",
        "--student",
        "lenet300",
        "--task-loss",
        "msee",
        "--out",
        "never",
    ],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_bad_loss_name_is_one_line_exit_2(argv, tmp_path):
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert "msee" in proc.stderr and "mse" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
