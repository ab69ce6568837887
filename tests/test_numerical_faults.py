"""A NaN or infinite loss, gradient or statistic stops its step with a NumericalError that
names the layer and the step and suggests a fix; the CLI exits 2 with one line; the last
good checkpoint survives and ``--resume`` continues to the uninterrupted result."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainsurgeon.cli.main import main
from brainsurgeon.errors import NumericalError


def _poison_epoch(monkeypatch, at: int) -> None:
    """Make the ``at``-th training epoch of this process see NaN weights (a diverged step)."""
    from brainsurgeon.training import loop

    real, calls = loop._epoch, []

    def epoch(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(loop, "_epoch", epoch)


def test_nan_batch_names_epoch_and_batch_and_suggests_lr(digits):
    from brainsurgeon.models import build_model
    from brainsurgeon.training import TrainConfig, fit

    x, y = digits.train.x.clone(), digits.train.y
    x[70] = float("nan")  # batch 2 of 64
    model = build_model("mlp:64-16-10", digits.input_shape, 10)
    config = TrainConfig(epochs=1, batch_size=64, schedule="none")
    with pytest.raises(NumericalError, match=r"train 1/1, batch \d+/\d+.*learning rate"):
        fit(model, (x, y), config, progress=False)


def test_nan_gradient_with_finite_loss_names_the_parameter(digits):
    from brainsurgeon.models import build_model
    from brainsurgeon.training import TrainConfig, fit

    model = build_model("mlp:64-16-10", digits.input_shape, 10)

    def loss_fn(net: nn.Module, x, y):  # finite value, NaN gradient: d sqrt(u)/du at u = 0
        out = net(x)
        return nn.functional.cross_entropy(out, y) + torch.sqrt((out - out.detach()).sum() ** 2)

    with pytest.raises(NumericalError, match=r"gradient of fc\d\.(weight|bias).*batch 1/"):
        fit(model, digits, TrainConfig(epochs=1), loss_fn=loss_fn, progress=False)


def test_quantize_nan_in_epoch_two_keeps_epoch_one_and_resumes(
    trained_run, tmp_path, monkeypatch, capsys
):
    args = ["quantize", str(trained_run), "--method", "kmeans", "--bits", "3",
            "--finetune-epochs", "3", "--seed", "4", "--quiet"]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*args, "--out", str(whole)]) == 0
    _poison_epoch(monkeypatch, at=2)
    assert main([*args, "--out", str(cut)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fine-tune 2/3" in err[0] and "learning rate" in err[0], err
    assert not (cut / "config.json").exists()
    assert [p.name for p in (cut / "epochs" / "fit-01").iterdir()] == ["epoch-001"]
    monkeypatch.undo()
    assert main([*args, "--out", str(cut)]) == 2  # an unfinished run needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    same = (whole / "model.safetensors").read_bytes() == (cut / "model.safetensors").read_bytes()
    assert same and not (cut / "epochs").exists()


def test_resume_may_lower_the_learning_rate_but_not_change_the_method(
    trained_run, tmp_path, monkeypatch, capsys
):
    args = ["quantize", str(trained_run), "--method", "kmeans", "--finetune-epochs", "2",
            "--quiet", "--out", str(tmp_path / "q")]  # fmt: skip
    _poison_epoch(monkeypatch, at=2)
    assert main([*args, "--bits", "3"]) == 2
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*args, "--bits", "4", "--resume"]) == 2
    assert "other options (bits)" in capsys.readouterr().err
    assert main([*args, "--bits", "3", "--finetune-lr", "5e-5", "--resume"]) == 0


def test_prune_nan_in_round_two_keeps_round_one(trained_run, tmp_path, monkeypatch, capsys):
    args = ["prune", str(trained_run), "--criterion", "magnitude", "--amount", "0.8",
            "--schedule", "iterative", "--rounds", "3", "--finetune-epochs", "1",
            "--quiet"]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*args, "--out", str(whole)]) == 0
    _poison_epoch(monkeypatch, at=2)
    assert main([*args, "--out", str(cut)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch 1/" in err[0] and "learning rate" in err[0], err
    assert (cut / "rounds" / "01" / "model.safetensors").exists()
    assert not (cut / "rounds" / "02").exists()
    monkeypatch.undo()
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    assert (whole / "model.safetensors").read_bytes() == (cut / "model.safetensors").read_bytes()


def test_distill_nan_keeps_finished_epochs(trained_run, tmp_path, monkeypatch, capsys):
    args = ["distill", "--teacher", str(trained_run), "--student", "mlp:64-16-10",
            "--epochs", "3", "--quiet"]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*args, "--out", str(whole)]) == 0
    _poison_epoch(monkeypatch, at=3)
    assert main([*args, "--out", str(cut)]) == 2
    assert "distill 3/3" in capsys.readouterr().err
    assert (cut / "epochs" / "fit-01" / "epoch-002").is_dir()
    monkeypatch.undo()
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    assert (whole / "model.safetensors").read_bytes() == (cut / "model.safetensors").read_bytes()


def test_statistic_turning_nan_names_tensor_and_batch(digits):
    from brainsurgeon.curvature import collect

    class Broken:
        what = "the empirical Fisher"

        def __init__(self):
            self.sums_ = {}

        def update(self, x, y):
            self.sums_["fc2.weight"] = torch.tensor([1.0, float("inf")])

    with pytest.raises(NumericalError, match=r"Fisher.*fc2\.weight.*batch 1 of"):
        collect(Broken(), nn.Linear(64, 10), digits.train, batch_size=256)


def test_layerwise_solver_nan_names_layer_and_suggests_damping(digits, monkeypatch):
    from brainsurgeon import prune
    from brainsurgeon.models import build_model
    from brainsurgeon.pruning import PruneConfig
    from brainsurgeon.pruning.criteria import layerwise_obs

    model = build_model("mlp:64-16-10", digits.input_shape, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def broken(W, H, *a, **k):
        return W * float("nan"), torch.ones_like(W, dtype=torch.bool)

    monkeypatch.setattr(layerwise_obs, "sparsegpt", broken)
    monkeypatch.setattr(layerwise_obs, "obc_prune", broken)
    config = PruneConfig(criterion="layerwise-obs", amount=0.5)
    with pytest.raises(NumericalError, match=r"layer-wise solve of fc1\.weight.*damp"):
        prune(model, config, digits, progress=False, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_damped_inverse_refuses_nan_hessian():
    from brainsurgeon.solvers import damped_inverse_cholesky

    H = torch.eye(4)
    H[1, 2] = float("nan")
    with pytest.raises(NumericalError, match="calibration inputs"):
        damped_inverse_cholesky(H)


def test_kmeans_nan_codebook_names_layer_and_leaves_model(digits, monkeypatch):
    from brainsurgeon.models import build_model
    from brainsurgeon.quantization import KMeansConfig, quantize
    from brainsurgeon.quantization.methods import kmeans

    model = build_model("mlp:64-16-10", digits.input_shape, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = kmeans.lloyd
    monkeypatch.setattr(kmeans, "lloyd", lambda *a, **k: (real(*a, **k)[0] * float("nan"),
                                                          real(*a, **k)[1]))  # fmt: skip
    with pytest.raises(NumericalError, match=r"kmeans gave fc1\.weight"):
        quantize(model, KMeansConfig(bits=3), device="cpu")
    assert sorted(model.state_dict()) == sorted(before)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
