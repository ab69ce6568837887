"""Run directories: bit-identical round trips, masks restored, corrupt input refused."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from brainsurgeon import runs
from brainsurgeon.errors import RunDirError
from brainsurgeon.models import build_model
from brainsurgeon.pruning.masks import masks_of, set_mask
from brainsurgeon.state import make_permanent


def test_round_trip_bit_identical(tmp_path, digits):
    torch.manual_seed(0)
    model = build_model("lenet5", digits.input_shape, digits.num_classes).eval()
    runs.save(model, tmp_path / "r", config={"data": digits.spec})
    loaded = runs.load(tmp_path / "r")
    x = digits.test.x[:50]
    assert torch.equal(model(x), loaded(x))
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"]["name"] == "lenet5" and cfg["versions"]["torch"] == torch.__version__


def test_masks_survive_save_load_and_deepcopy(tmp_path, digits):
    model = build_model("lenet300", digits.input_shape, digits.num_classes).eval()
    keep = torch.rand(300, 64, generator=torch.Generator().manual_seed(0)) > 0.7
    set_mask(model.fc1, "weight", keep)
    runs.save(model, tmp_path / "m")
    loaded = runs.load(tmp_path / "m")
    assert torch.equal(masks_of(loaded)["fc1.weight"], keep)
    assert torch.equal(loaded.fc1.weight, model.fc1.weight)
    assert int((loaded.fc1.weight != 0).sum()) <= int(keep.sum())
    clone = copy.deepcopy(loaded)
    assert torch.equal(masks_of(clone)["fc1.weight"], keep)
    make_permanent(clone)
    assert masks_of(clone) == {} and torch.equal(clone.fc1.weight, model.fc1.weight)
    assert "fc1.weight" in clone.state_dict()


def test_existing_run_needs_force(tmp_path, digits):
    model = build_model("lenet300", digits.input_shape, digits.num_classes)
    runs.save(model, tmp_path / "r")
    with pytest.raises(RunDirError, match="already exists; choose another --out or pass --force"):
        runs.save(model, tmp_path / "r")
    runs.save(model, tmp_path / "r", force=True)


def test_model_without_spec_is_refused(tmp_path):
    with pytest.raises(RunDirError, match="carries no spec"):
        runs.save(torch.nn.Linear(2, 2), tmp_path / "x")


def test_bad_run_directories(tmp_path, trained_run):
    with pytest.raises(RunDirError, match="does not exist"):
        runs.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="has no config.json"):
        runs.load(tmp_path / "empty")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained_run, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(RunDirError, match="replaced or damaged"):  # the recorded sha256
        runs.load(bad)
    cfg = json.loads((bad / "config.json").read_text())
    del cfg["weights_sha256"]  # a run written before checksums: the parse still fails clearly
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match="model.safetensors is corrupt"):
        runs.load(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        runs.load(bad)


def test_weights_that_do_not_match_the_config(tmp_path, digits):
    model = build_model("lenet300", digits.input_shape, digits.num_classes)
    runs.save(model, tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    cfg["model"]["name"] = "lenet5"
    (tmp_path / "r" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match="does not match the model in config.json"):
        runs.load(tmp_path / "r")


def test_run_data_uses_recorded_normalisation(trained_run):
    run = runs.load_run(trained_run)
    data = run.data()
    assert data.normalization == run.config["normalization"]
    child = run.child_config({"step": "prune"})
    assert child["history"][-1]["step"] == "prune" and "parent" in child["history"][-1]
    assert run.config["history"][-1]["step"] == "train"


def test_weights_of_another_model_are_refused_by_checksum(tmp_path, digits):
    from brainsurgeon import runs
    from brainsurgeon.errors import RunDirError
    from brainsurgeon.models import build_model

    torch.manual_seed(0)
    a = runs.save(build_model("mlp:64-8-10", digits.input_shape, 10), tmp_path / "a")
    b = runs.save(build_model("mlp:64-8-10", digits.input_shape, 10), tmp_path / "b")
    (a / runs.MODEL_FILE).write_bytes((b / runs.MODEL_FILE).read_bytes())  # same shapes
    with pytest.raises(RunDirError, match="checksum"):
        runs.load_run(a)
    assert runs.load_run(b).config["weights_sha256"]


def test_a_bogus_parametrization_record_is_named(tmp_path, digits):
    from brainsurgeon.pruning.masks import set_mask

    model = build_model("mlp:64-8-10", digits.input_shape, 10)
    set_mask(model.fc1, "weight", torch.ones_like(model.fc1.weight, dtype=torch.bool))
    path = runs.save(model, tmp_path / "r")
    cfg = json.loads((path / runs.CONFIG_FILE).read_text())
    cfg["parametrizations"][0].pop("module")
    (path / runs.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match=r"parametrizations\[0\] in the run config is malformed"):
        runs.load_run(path)
    cfg["parametrizations"][0]["module"] = "fc9"
    (path / runs.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match="names module 'fc9'"):
        runs.load_run(path)
