"""CLI: prune, criteria and saliency-check through the real entry point."""

from __future__ import annotations

import json
import os
import re

import pytest

from brainsurgeon import runs
from brainsurgeon.cli.main import main
from brainsurgeon.pruning import CRITERIA, masks_of
from conftest import run_cli


@pytest.fixture(autouse=True, scope="module")
def _one_thread_subprocesses():
    """Tiny nets run fastest on one thread and do not spin against other processes."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if old is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = old


def test_criteria_lists_every_criterion_with_a_description(capsys):
    proc = run_cli("criteria", "--json", check=True)
    rows = json.loads(proc.stdout)["criteria"]
    assert [r["name"] for r in rows] == CRITERIA.names()
    assert all(r["description"] for r in rows)
    magnitude = next(r for r in rows if r["name"] == "magnitude")
    assert magnitude["options"] == {"power": 1} and magnitude["needs_data"] is False
    assert main(["criteria"]) == 0
    text = capsys.readouterr().out
    assert "magnitude" in text and "Han et al. 2015" in text


def test_prune_writes_a_run_that_loads_with_its_masks(trained_run, tmp_path):
    out = tmp_path / "pruned"
    proc = run_cli(
        "prune",
        str(trained_run),
        "--criterion",
        "obd",
        "--option",
        "hessian=ggn",
        "--amount",
        "0.8",
        "--samples",
        "300",
        "--out",
        str(out),
        "--json",
        check=True,
    )
    payload = json.loads(proc.stdout)
    assert payload["total_sparsity"] == pytest.approx(0.8, abs=1e-5)
    assert payload["config"]["criterion_options"] == {"hessian": "ggn"}
    assert 0 < payload["test_accuracy"] <= 1
    run = runs.load_run(out)
    assert set(masks_of(run.model)) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert run.config["history"][-1]["step"] == "prune"
    assert run.config["history"][-1]["parent"] == str(trained_run)
    assert run.config["data"]["name"] == "digits"
    assert run.metrics["test_accuracy"] == pytest.approx(payload["test_accuracy"])


def test_iterative_prune_resumes(trained_run, tmp_path):
    out = tmp_path / "iter"
    args = [
        "prune",
        str(trained_run),
        "--criterion",
        "magnitude",
        "--amount",
        "0.9",
        "--schedule",
        "iterative",
        "--rounds",
        "2",
        "--finetune-epochs",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    first = json.loads(run_cli(*args, check=True).stdout)
    assert [r["round"] for r in first["rounds"]] == [1, 2]
    again = run_cli(*args)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    resumed = json.loads(run_cli(*args, "--resume", check=True).stdout)
    assert resumed["total_sparsity"] == first["total_sparsity"]


def test_layer_sparsity_file(trained_run, tmp_path):
    spec = tmp_path / "layers.json"
    spec.write_text(json.dumps({"layer_sparsity": {"fc1": 0.9, "fc2": 0.5, "fc3": 0.0}}))
    proc = run_cli(
        "prune",
        str(trained_run),
        "--layer-sparsity",
        str(spec),
        "--out",
        str(tmp_path / "o"),
        "--json",
        check=True,
    )
    sparsity = json.loads(proc.stdout)["sparsity"]
    assert sparsity["fc1.weight"] == pytest.approx(0.9, abs=1e-4)
    assert sparsity["fc2.weight"] == pytest.approx(0.5)
    assert sparsity["fc3.weight"] == 0


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--criterion", "obdd"], "unknown criterion 'obdd'; valid: .*magnitude"),
        (["--scheme", "blind"], "unknown selection scheme 'blind'; valid: class-distribution"),
        (["--amount", "1.5"], r"amount must lie in \(0, 1\), got 1.5"),
        (["--option", "hessian"], "expected KEY=VALUE"),
        (["--criterion", "obd", "--option", "hessian=full"], "obd hessian must be one of"),
        (["--rounds", "3"], "rounds=3 needs a multi-round schedule"),
        (["--nm", "2-4", "--scheme", "nm"], "--nm must look like N:M"),
        (["--criterion", "obs", "--option", "max_memory=1000"], "raise max_memory"),
    ],
)
def test_bad_input_exits_2_without_writing(trained_run, tmp_path, extra, message, capsys):
    """Through ``main`` in-process (the same entry point; a subprocess per case is slow)."""
    out = tmp_path / "never"
    code = main(["prune", str(trained_run), "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_bad_input_through_a_subprocess(trained_run, tmp_path):
    out = tmp_path / "never"
    proc = run_cli("prune", str(trained_run), "--out", str(out), "--criterion", "obdd", "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "unknown criterion 'obdd'; valid: " in proc.stderr and not out.exists()


def test_missing_run_and_existing_out(trained_run, tmp_path, capsys):
    assert main(["prune", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["prune", str(trained_run), "--out", str(tmp_path / "taken")]) == 2
    assert "holds no pruning run; choose another --out" in capsys.readouterr().err


def test_saliency_check_cli(trained_run, capsys):
    proc = run_cli(
        "saliency-check",
        str(trained_run),
        "--criteria",
        "obd,magnitude,random",
        "--weights",
        "100",
        "--samples",
        "200",
        "--json",
        check=True,
    )
    report = json.loads(proc.stdout)
    assert [r["criterion"] for r in report["criteria"]] == ["obd", "magnitude", "random"]
    assert report["weights"] == 100
    obd, magnitude = report["criteria"][0], report["criteria"][1]
    assert obd["mae"] is not None and magnitude["mae"] is None
    assert -1 <= obd["spearman"] <= 1 and -1 <= obd["kendall"] <= 1
    code = main(
        [
            "saliency-check",
            str(trained_run),
            "--criteria",
            "magnitude",
            "--weights",
            "50",
            "--samples",
            "100",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "spearman" in text and "rank only" in text


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--criteria", "obdd"], "unknown criterion 'obdd'"),
        (["--criteria", ""], "--criteria is empty"),
        (["--criteria", "obd", "--option", "obs.damp=1"], "'obs' is not in --criteria"),
        (["--criteria", "obd", "--option", "hessian=ggn"], "expected CRITERION.KEY=VALUE"),
        (["--weights", "1"], "--weights must be >= 3"),
    ],
)
def test_saliency_check_bad_input(trained_run, extra, message, capsys):
    code = main(["saliency-check", str(trained_run), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


@pytest.mark.parametrize("command", ["prune", "saliency-check", "criteria"])
def test_help_teaches(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "example" in capsys.readouterr().out
