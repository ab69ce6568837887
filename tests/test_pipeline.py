"""The pipeline: prune_run (round checkpoints, resume, force, the run directory), the one
fine-tuning function, and verbs that leave the model unchanged when they raise."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from brainsurgeon import runs
from brainsurgeon.errors import ConfigError, NumericalError, RunDirError
from brainsurgeon.models import build_model
from brainsurgeon.pipeline import FinetuneConfig, finetune, prune_run
from brainsurgeon.pruning import PruneConfig, masks_of, prune
from brainsurgeon.training import TrainConfig, evaluate, fit


@pytest.fixture(scope="module")
def small(digits):
    """A trained 64-32-16-10 MLP on digits (a second or two)."""
    torch.manual_seed(0)
    model = build_model("mlp:64-32-16-10", digits.input_shape, digits.num_classes)
    fit(model, digits, TrainConfig(epochs=4, seed=0), progress=False)
    return model


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_interrupted_run_resumes_to_the_same_result(small, digits, tmp_path):
    config = PruneConfig(
        criterion="random", amount=0.8, schedule="iterative", rounds=4, finetune_epochs=1, seed=5
    )
    straight = copy.deepcopy(small)
    prune_run(straight, config, digits, progress=False, out_dir=tmp_path / "a")

    def crash(record):
        if record["round"] == 2:
            raise KeyboardInterrupt

    out = tmp_path / "b"
    interrupted = copy.deepcopy(small)
    with pytest.raises(KeyboardInterrupt):
        prune_run(interrupted, config, digits, progress=False, out_dir=out, callback=crash)
    assert masks_of(interrupted) == {} and _same(interrupted, small)
    assert sorted(p.name for p in (out / "rounds").iterdir()) == ["01", "02"]
    assert not (out / runs.CONFIG_FILE).exists()
    with pytest.raises(RunDirError, match="unfinished pruning run; pass --resume"):
        prune_run(copy.deepcopy(small), config, digits, progress=False, out_dir=out)
    with pytest.raises(RunDirError, match=r"different pruning run \(fields differ: \['amount'\]"):
        prune_run(
            copy.deepcopy(small),
            config.replace(amount=0.7),
            digits,
            progress=False,
            out_dir=out,
            resume=True,
        )
    resumed = copy.deepcopy(small)
    result = prune_run(resumed, config, digits, progress=False, out_dir=out, resume=True)
    assert [r["round"] for r in result.rounds] == [1, 2, 3, 4]
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    # resuming a finished run reports it and restores its state
    again = copy.deepcopy(small)
    done = prune_run(again, config, digits, progress=False, out_dir=out, resume=True)
    assert done.total_sparsity == result.total_sparsity
    assert torch.equal(again.fc1.weight, resumed.fc1.weight)


def test_saved_run_restores_masks_and_records_pruning(small, digits, tmp_path):
    model = copy.deepcopy(small)
    config = PruneConfig(amount=0.75, schedule="iterative", rounds=2, finetune_epochs=1)
    result = prune_run(model, config, digits, progress=False, out_dir=tmp_path / "p")
    run = runs.load_run(tmp_path / "p")
    for name, keep in masks_of(model).items():
        assert torch.equal(masks_of(run.model)[name], keep)
    info = run.config["compression"]["pruning"]
    assert info["config"] == config.to_dict()
    assert info["total_sparsity"] == pytest.approx(result.total_sparsity)
    assert len(info["rounds"]) == 2 and run.config["history"][-1]["step"] == "prune"
    assert math.isclose(run.metrics["test_accuracy"], evaluate(model, digits)["accuracy"])
    for r in ("01", "02"):
        assert json.loads((tmp_path / "p" / "rounds" / r / "metrics.json").read_text())["round"]
    with pytest.raises(RunDirError, match="already holds a finished run"):
        prune_run(copy.deepcopy(small), config, digits, progress=False, out_dir=tmp_path / "p")
    other = config.replace(amount=0.5, schedule="oneshot", rounds=1, finetune_epochs=0)
    prune_run(
        copy.deepcopy(small), other, digits, progress=False, out_dir=tmp_path / "p", force=True
    )
    replaced = runs.load_run(tmp_path / "p")
    assert replaced.config["compression"]["pruning"]["config"]["amount"] == 0.5
    assert sorted(p.name for p in (tmp_path / "p" / "rounds").iterdir()) == ["01"]
    (tmp_path / "foreign").mkdir()
    with pytest.raises(RunDirError, match="holds no pruning run"):
        prune_run(copy.deepcopy(small), config, digits, out_dir=tmp_path / "foreign", resume=True)


def test_bad_inputs_fail_before_writing_anything(small, digits, tmp_path):
    model = copy.deepcopy(small)
    with pytest.raises(ConfigError, match="criterion 'obd' needs data"):
        prune_run(model, PruneConfig(criterion="obd"), None, out_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="exclude pattern 'fc9' matches no"):
        prune_run(model, PruneConfig(exclude=("fc9",)), digits, out_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="resume needs out_dir"):
        prune_run(model, PruneConfig(), digits, out_dir=None, resume=True)
    assert not (tmp_path / "x").exists()
    assert masks_of(model) == {} and _same(model, small)


@pytest.mark.parametrize("where", ["callback", "fine-tuning"])
def test_a_prune_that_raises_leaves_the_model_unchanged(small, digits, where, monkeypatch):
    model = copy.deepcopy(small).train()
    model.fc2.eval()  # a mixed mode, restored as it was
    config = PruneConfig(amount=0.8, schedule="iterative", rounds=3, finetune_epochs=1)

    def crash(record):
        if record["round"] == 2:
            raise KeyboardInterrupt

    if where == "fine-tuning":
        calls = {"n": 0}
        real = F.cross_entropy

        def failing(out, y, **kw):
            calls["n"] += 1
            if calls["n"] > 30:  # well into the second round's fine-tuning
                raise NumericalError("loss became nan")
            return real(out, y, **kw)

        with pytest.raises(NumericalError):
            prune(model, config, digits, loss=failing, progress=False)
        assert calls["n"] > 30
    else:
        with pytest.raises(KeyboardInterrupt):
            prune(model, config, digits, progress=False, callback=crash)
    assert masks_of(model) == {}
    assert _same(model, small)
    assert model.training and not model.fc2.training and model.fc1.training


def test_loss_and_target_globs_reach_the_criterion(small, digits):
    seen = []

    def loss(out, y):
        seen.append(out.shape)
        return F.cross_entropy(out, y)

    model = copy.deepcopy(small)
    config = PruneConfig(criterion="obd", amount=0.5, samples=100, layers=("fc1*", "fc2"))
    result = prune(model, config, digits, loss=loss, progress=False)
    assert seen and set(result.sparsity) == {"fc1.weight", "fc2.weight"}
    assert set(masks_of(model)) == {"fc1.weight", "fc2.weight"}
    excluded = prune(copy.deepcopy(small), PruneConfig(exclude=("fc1",)), digits, progress=False)
    assert set(excluded.sparsity) == {"fc2.weight", "fc3.weight"}


def test_finetune_is_seeded_and_leaves_the_global_rng_alone(small, digits):
    a, b = copy.deepcopy(small), copy.deepcopy(small)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    history = finetune(a, digits, FinetuneConfig(epochs=2, lr=0.01, seed=4), progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    finetune(b, digits, FinetuneConfig(epochs=2, lr=0.01, seed=4), progress=False)
    assert _same(a, b) and not _same(a, small)
    assert [h["lr"] for h in history] == [0.01, 0.01]  # halved every 2 epochs: not yet
    assert finetune(copy.deepcopy(small), digits, FinetuneConfig(epochs=0)) == []


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"lr": 0}, r"fine-tuning lr must be > 0, got 0"),
        ({"epochs": -1}, "epochs must be >= 0"),
        ({"lr_gamma": 2.0}, r"lr_gamma must lie in \(0, 1\]"),
        ({"l1": -1.0}, "l1 must be >= 0"),
    ],
)
def test_finetune_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig(**kwargs)


def test_save_child_records_the_step_compression_and_final_metrics(trained_run, digits, tmp_path):
    from brainsurgeon.pipeline import save_child

    parent = runs.load_run(trained_run)
    finetune(parent.model, digits, FinetuneConfig(epochs=1), progress=False)
    out = save_child(
        parent.model,
        parent,
        tmp_path / "child",
        step={"step": "finetune", "epochs": 1},
        compression={"note": {"epochs": 1}},
        data=digits,
        metrics={"extra": 3},
        training=FinetuneConfig(epochs=1).to_dict(),
    )
    child = runs.load_run(out)
    assert child.config["history"][-1] == {
        "step": "finetune",
        "epochs": 1,
        "parent": str(trained_run),
    }
    assert child.config["compression"]["note"] == {"epochs": 1}
    assert child.config["training"]["type"] == "FinetuneConfig"
    assert child.metrics["extra"] == 3
    assert child.metrics["test_accuracy"] == evaluate(parent.model, digits)["accuracy"]
    assert "val_accuracy" in child.metrics
    with pytest.raises(RunDirError):
        save_child(parent.model, parent, out, step={"step": "again"})
