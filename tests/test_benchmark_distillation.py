"""benchmarks/distillation.py: option parsing, bad values, and what --resume may reuse."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).parents[1] / "benchmarks" / "distillation.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_distillation", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_kd_options_round_trip(bench):
    assert bench.parse_kd("adam:0.001@0.5@T2") == ("adam:0.001", 0.5, 2.0)
    assert bench.parse_kd("adam:0.001@0.5") == ("adam:0.001", 0.5, 20.0)  # rows before T
    assert bench.with_temperature("sgd:0.01@0.9@T20", 3.0) == "sgd:0.01@0.9@T3"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperatures", "0"], "T > 0"),
        (["--temperatures", "hot"], "expected OPT:LR@ALPHA@TTEMP"),
        (["--alphas", "1.5"], r"alpha must lie in \[0, 1\]"),
        (["--kd-opts", "rmsprop:0.1"], "expected sgd:LR or adam:LR"),
        (["--hard-opts", "sgd"], "expected sgd:LR or adam:LR"),
    ],
)
def test_bad_options_exit_2_before_training(bench, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        bench.main(args)
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def _previous(tmp_path, settings, teacher_errors=84):
    rows = [
        {"seed": 0, "model": "teacher", "test_errors": teacher_errors, "val_errors": 87},
        {"seed": 0, "model": "800-800", "method": "kd", "opt": "adam:0.001@0.9@T2"},
        {"seed": 0, "model": "30-30", "method": "kd", "opt": "adam:0.001@0.9@T10", "sweep": True},
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"settings": settings, "rows": rows}))
    return str(path)


def test_resume_reuses_rows_only_from_the_same_settings_and_teacher(bench, tmp_path):
    cfg = dict.fromkeys(bench.TRAINING_KEYS, 1)
    teacher = {"test_errors": 84, "val_errors": 87}
    reused = bench.previous_rows(_previous(tmp_path, cfg), cfg, teacher)
    assert set(reused) == {
        (0, "800-800", "kd", "adam:0.001@0.9@T2", False),
        (0, "30-30", "kd", "adam:0.001@0.9@T10", True),
    }
    assert (
        bench.previous_rows(_previous(tmp_path, {**cfg, "student_epochs": 2}), cfg, teacher) == {}
    )
    assert bench.previous_rows(_previous(tmp_path, cfg, teacher_errors=90), cfg, teacher) == {}
    assert bench.previous_rows(str(tmp_path / "missing.json"), cfg, teacher) == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert bench.previous_rows(str(tmp_path / "bad.json"), cfg, teacher) == {}
