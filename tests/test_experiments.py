"""compare / sensitivity: bookkeeping, resumption, oracles on tiny models, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brainsurgeon import runs
from brainsurgeon.data import DataBundle, Dataset, load_data
from brainsurgeon.errors import ConfigError, RunDirError
from brainsurgeon.experiments import CompareConfig, compare
from brainsurgeon.experiments.common import mean_std
from brainsurgeon.experiments.sensitivity import SensitivityConfig, sensitivity, suggest
from brainsurgeon.models import build_model
from brainsurgeon.pruning.masks import set_mask
from brainsurgeon.training import TrainConfig, evaluate, fit
from conftest import run_cli

SMALL = CompareConfig(
    criteria=("random", "magnitude"),
    sparsities=(0.5, 0.8),
    seeds=2,
    samples=100,
    quantizers=("kmeans:3",),
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("exp") / "base"
    data = load_data("digits")
    model = build_model("mlp:64-16-10", data.input_shape, data.num_classes)
    fit(model, data, TrainConfig(epochs=4, seed=0), progress=False)
    runs.save(
        model, path, config={"data": data.spec, "normalization": data.normalization, "seed": 0}
    )
    return path


@pytest.fixture(scope="module")
def compared(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "out"
    return out, compare(tiny_run, SMALL, out, device="cpu")


def test_every_cell_gets_the_same_budget_and_seeds_change_random_only(compared):
    out, payload = compared
    cells = payload["cells"]
    assert len(cells) == 2 * (2 * 2 + 1)
    assert len({json.dumps(c["budget"], sort_keys=True) for c in cells}) == 1
    assert cells[0]["budget"]["calibration_samples"] == 100
    by = {(c["method"], c.get("sparsity"), c["seed_index"]): c for c in cells}
    for s in (0.5, 0.8):
        assert by[("magnitude", s, 0)]["accuracy"] == by[("magnitude", s, 1)]["accuracy"]
        assert abs(by[("magnitude", s, 0)]["weight_sparsity"] - s) < 0.01
    assert any(
        by[("random", s, 0)]["accuracy"] != by[("random", s, 1)]["accuracy"] for s in (0.5, 0.8)
    )
    row = next(r for r in payload["summary"] if r["method"] == "random" and r["sparsity"] == 0.8)
    accs = [by[("random", 0.8, k)]["accuracy"] for k in (0, 1)]
    assert row["accuracy"] == mean_std(accs) and row["accuracy"]["n"] == 2
    assert payload["seed"] == 0 and {"torch", "machine", "torch_threads"} <= set(
        payload["environment"]
    )


def test_magnitude_cell_matches_hand_pruned_model(tiny_run, compared):
    """Oracle: global magnitude pruning done by hand gives the cell's accuracy exactly."""
    _, payload = compared
    run = runs.load_run(tiny_run)
    layers = [run.model.fc1, run.model.fc2]
    scores = torch.cat([m.weight.detach().abs().flatten() for m in layers])
    k = round(0.8 * scores.numel())
    threshold = scores.sort().values[k - 1]
    for m in layers:
        set_mask(m, "weight", m.weight.detach().abs() > threshold)
    acc = evaluate(run.model, run.data(progress=False))["accuracy"]
    cell = next(
        c for c in payload["cells"] if c["method"] == "magnitude" and c.get("sparsity") == 0.8
    )
    assert cell["accuracy"] == pytest.approx(acc, abs=1 / 270)


def test_plots_and_summary_written(compared):
    out, payload = compared
    assert {Path(p).name for p in payload["plots"]} == {
        "accuracy_vs_sparsity.png",
        "accuracy_vs_compression.png",
    }
    for p in payload["plots"]:
        img = Image.open(p)
        assert img.size[0] > 300 and np.unique(np.asarray(img.convert("L"))).size > 10
    assert "| magnitude | 0.8 |" in (out / "summary.md").read_text()
    saved = json.loads((out / "compare.json").read_text())
    assert saved["summary"] == payload["summary"]


def test_interrupted_comparison_resumes_without_redoing_cells(tiny_run, tmp_path):
    config = CompareConfig(criteria=("random", "magnitude"), sparsities=(0.5, 0.9), samples=50)
    lines: list[str] = []

    def stop_after_two(message: str) -> None:
        lines.append(message)
        if len(lines) == 3:  # baseline + two cells finished
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare(tiny_run, config, tmp_path / "c", device="cpu", log=stop_after_two)
    done = sorted((tmp_path / "c" / "cells").glob("*.json"))
    assert len(done) == 3 and not (tmp_path / "c" / "compare.json").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    again: list[str] = []
    payload = compare(tiny_run, config, tmp_path / "c", device="cpu", log=again.append)
    assert sum("done earlier, kept" in m for m in again) == 3
    assert len(payload["cells"]) == 4
    assert {p.name: p.stat().st_mtime_ns for p in done} == stamps


def test_bad_compare_input_fails_before_writing(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="criteria: the list is empty"):
        CompareConfig(criteria=())
    with pytest.raises(ConfigError, match=r"sparsities must lie in \(0, 1\), got 1.0"):
        CompareConfig(sparsities=(0.5, 1.0))
    with pytest.raises(ConfigError, match="unknown criterion 'magnitud'.*Did you mean"):
        CompareConfig(criteria=("magnitud",))
    with pytest.raises(ConfigError, match="quantizers: 'kmeans:x' must be METHOD or METHOD:BITS"):
        CompareConfig(quantizers=("kmeans:x",))
    with pytest.raises(ConfigError, match="criterion_options names 'obs', which is not among"):
        CompareConfig(criteria=("magnitude",), criterion_options={"obs": {"block_size": 8}})
    with pytest.raises(ConfigError, match=r"criterion 'obs' has no option\(s\) \['block_sise'\]"):
        CompareConfig(criteria=("obs",), criterion_options={"obs": {"block_sise": 8}})
    with pytest.raises(RunDirError, match="does not exist"):
        compare(tmp_path / "missing", SMALL, tmp_path / "o1")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(RunDirError, match="exists and is not a compare directory"):
        compare(tiny_run, SMALL, tmp_path / "junk")
    assert not (tmp_path / "o1").exists()


def diagonal_toy(tmp_path) -> tuple[runs.Run, DataBundle]:
    """One Linear 10->10: W = diag(1..10) + 0.01 elsewhere, inputs e_i with label i.

    Pruning the 100 weights by magnitude removes the 90 off-diagonal ones first (accuracy
    stays 1.0), then the diagonal from the smallest: with W_ii gone input i scores 0 on every
    class and argmax picks class 0. So accuracy at sparsity s is exactly known.
    """
    model = build_model("mlp:10-10", (1, 1, 10), 10)
    with torch.no_grad():
        model.fc1.weight.copy_(torch.full((10, 10), 0.01) + torch.diag(torch.arange(1.0, 11.0)))
        model.fc1.bias.zero_()
    ds = Dataset(torch.eye(10).reshape(10, 1, 1, 10), torch.arange(10))
    data = DataBundle("toy", ds, ds, ds, 10, {"mean": 0.0, "std": 1.0})
    spec = {"name": "mlp:10-10", "input_shape": [1, 1, 10], "num_classes": 10, "kwargs": {}}
    return runs.Run(tmp_path / "toy", model, {"model": spec}), data


def test_sensitivity_curve_is_monotone_and_exact_on_toy(tmp_path):
    run, data = diagonal_toy(tmp_path)
    config = SensitivityConfig(sparsities=(0.5, 0.9, 0.95, 0.99), max_drop=0.0, samples=10)
    payload = sensitivity(run, config, tmp_path / "sens", data=data, device="cpu")
    curve = [p["accuracy"] for p in payload["curves"]["fc1.weight"]]
    assert curve == pytest.approx([1.0, 1.0, 0.6, 0.2])
    assert all(a >= b for a, b in zip(curve[:-1], curve[1:], strict=True))
    saved = json.loads((tmp_path / "sens" / "layer_sparsity.json").read_text())
    assert saved == {"layer_sparsity": {"fc1.weight": 0.9}}
    assert payload["combined"]["accuracy"] == 1.0
    assert (tmp_path / "sens" / "sensitivity.png").stat().st_size > 5_000


def test_suggest_is_the_largest_sparsity_within_budget():
    curves = {
        "a": [{"sparsity": 0.5, "accuracy": 0.90}, {"sparsity": 0.9, "accuracy": 0.80}],
        "b": [{"sparsity": 0.5, "accuracy": 0.70}, {"sparsity": 0.9, "accuracy": 0.60}],
    }
    assert suggest(curves, 0.9, 0.1) == {"a": 0.9, "b": 0.0}
    assert suggest(curves, 0.9, 0.0) == {"a": 0.5, "b": 0.0}


def cli(*args: str):
    return run_cli(*args)


def test_cli_compare_and_sensitivity(tiny_run, tmp_path):
    done = cli(
        "compare",
        str(tiny_run),
        "--criteria",
        "magnitude",
        "--sparsities",
        "0.5,0.9",
        "--samples",
        "50",
        "--out",
        str(tmp_path / "c"),
        "--json",
        "-q",
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert [r["sparsity"] for r in payload["summary"]] == [0.5, 0.9]
    done = cli(
        "sensitivity",
        str(tiny_run),
        "--sparsities",
        "0.5,0.9",
        "--samples",
        "50",
        "--out",
        str(tmp_path / "s"),
        "--json",
        "-q",
    )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["suggested"]["layer_sparsity"]) == {
        "fc1.weight",
        "fc2.weight",
    }
    for bad, message in [
        (
            ["compare", str(tiny_run), "--criteria", ",", "--out", str(tmp_path / "x")],
            "criteria: the list is empty",
        ),
        (
            ["sensitivity", str(tiny_run), "--max-drop", "-1", "--out", str(tmp_path / "x")],
            "--max-drop is in percentage points",
        ),
    ]:
        res = cli(*bad)
        assert res.returncode == 2 and re.search(message, res.stderr), res.stderr
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def studied(tiny_run, tmp_path_factory):
    from brainsurgeon.experiments.study import StudyConfig, study_obd_sd

    config = StudyConfig(
        criteria=("obd", "random"),
        rounds=2,
        final_sparsity=0.6,
        finetune_epochs=1,
        samples=64,
        sampled_weights=3,
        scatter_weights=200,
    )
    out = tmp_path_factory.mktemp("study") / "out"
    return out, study_obd_sd(tiny_run, config, out, device="cpu")


def test_study_records_rounds_histograms_and_findings(studied):
    out, payload = studied
    weights = 64 * 16 + 16 * 10
    for crit in ("obd", "random"):
        rounds = payload["criteria"][crit]["rounds"]
        assert [r["round"] for r in rounds] == [1, 2] and rounds[-1]["target"] == 0.6
        assert sum(rounds[0]["damage_hist"]["counts"]) == weights  # all alive before round 1
        assert rounds[1]["weight_hist"]["alive"] == pytest.approx(0.4 * weights, abs=2)
    f = payload["findings"]
    assert f["obd_loses_to_random"] == (f["obd_minus_random"]["final"] < 0)
    names = {Path(p).name for p in payload["plots"]}
    assert {
        "accuracy_per_round.png",
        "sd_vs_mean.png",
        "second_derivative_samples.png",
        "damage_hist_obd.png",
        "weights_hist_random.png",
    } <= names
    assert "Does OBD lose to random pruning?" in (out / "summary.md").read_text()
    assert payload["seed"] == 0 and "torch" in payload["environment"]


def test_study_second_derivatives_match_autograd(tiny_run, studied):
    """Oracle: the per-sample d2L_n/dw_q^2 of the sampled weights, by double backward."""
    _, payload = studied
    run = runs.load_run(tiny_run)
    data = run.data(progress=False).train.subset(64, seed=0)
    for w in payload["trained_model"]["sampled_weights"]:
        module = run.model.get_submodule(w["tensor"].rsplit(".", 1)[0])
        idx = tuple(w["index"])
        for n in range(4):
            loss = torch.nn.functional.cross_entropy(
                run.model(data.x[n : n + 1]), data.y[n : n + 1]
            )
            (g,) = torch.autograd.grad(loss, module.weight, create_graph=True)
            (h,) = torch.autograd.grad(g[idx], module.weight)
            assert w["h_per_sample"][n] == pytest.approx(float(h[idx]), rel=1e-4, abs=1e-8)


def test_layers_and_exclude_choose_what_the_experiments_prune(tiny_run, tmp_path):
    from brainsurgeon.experiments.sensitivity import SensitivityConfig, sensitivity

    config = SensitivityConfig(
        sparsities=(0.5,), samples=50, exclude=("fc2",), loss="cross_entropy"
    )
    payload = sensitivity(tiny_run, config, tmp_path / "s", device="cpu")
    assert set(payload["curves"]) == {"fc1.weight"}
    only = CompareConfig(criteria=("magnitude",), sparsities=(0.5,), samples=50, layers=("fc2",))
    cells = compare(tiny_run, only, tmp_path / "c", device="cpu")["cells"]
    pruned = [c for c in cells if c["kind"] == "prune"]
    for c in pruned:  # half of fc2's 160 weights, nothing else
        assert c["weights"] - c["nonzero_weights"] == 80, c
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        SensitivityConfig(loss="hinge")
