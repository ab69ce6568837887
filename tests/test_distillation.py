"""Distillation: losses against closed forms, transfer sets, FitNets hints, run dirs, CLI."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainsurgeon.distillation import (
    DistillConfig,
    augment,
    build_transfer_set,
    check_compatible,
    distill,
    hint_loss,
    kd_loss,
    logit_mse_loss,
    shift_images,
)
from brainsurgeon.distillation.hints import make_regressor
from brainsurgeon.errors import ConfigError
from brainsurgeon.models import build_model
from brainsurgeon.runs import load_run, save
from brainsurgeon.training import TrainConfig, evaluate, fit
from conftest import run_cli


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    model = build_model("mlp:64-96-64-10,dropout=0.3", digits.input_shape, digits.num_classes)
    fit(model, digits, TrainConfig(epochs=6), progress=False)
    return model.eval()


def _student(digits, spec="mlp:64-24-10", seed=1):
    torch.manual_seed(seed)
    return build_model(spec, digits.input_shape, digits.num_classes)


# ---- losses -------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_gradient_is_the_closed_form(temperature):
    torch.manual_seed(0)
    z_s = torch.randn(5, 7, requires_grad=True)
    z_t = torch.randn(5, 7) * 3
    kd_loss(z_s, z_t, torch.randint(0, 7, (5,)), temperature=temperature, alpha=1.0).backward()
    q = torch.softmax(z_s.detach() / temperature, 1)
    p = torch.softmax(z_t / temperature, 1)
    closed = temperature**2 * (q - p) / temperature / 5  # T^2 scaling, batch mean
    assert torch.allclose(z_s.grad, closed, atol=1e-6)


def test_kd_value_against_hand_computation():
    z_s, z_t, y = (
        torch.tensor([[1.0, 2.0, 0.5]]),
        torch.tensor([[3.0, 0.0, 1.0]]),
        torch.tensor([1]),
    )
    t, a = 2.0, 0.3
    p = [torch.exp(z_t[0, i] / t) for i in range(3)]
    p = [v / sum(p) for v in p]
    q = [torch.exp(z_s[0, i] / t) for i in range(3)]
    q = [v / sum(q) for v in q]
    kl = sum(p[i] * torch.log(p[i] / q[i]) for i in range(3))
    ce = -torch.log(torch.exp(z_s[0, 1]) / torch.exp(z_s[0]).sum())
    expected = a * t**2 * kl + (1 - a) * ce
    assert kd_loss(z_s, z_t, y, temperature=t, alpha=a).item() == pytest.approx(expected.item())


def test_alpha_zero_is_cross_entropy():
    torch.manual_seed(0)
    z_s, z_t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    for loss in (kd_loss, logit_mse_loss):
        got = loss(z_s, z_t, y, temperature=7.0, alpha=0.0)
        assert torch.equal(got, F.cross_entropy(z_s, y))


def test_without_labels_only_the_teacher_term_counts():
    torch.manual_seed(0)
    z_s, z_t = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(
        kd_loss(z_s, z_t, None, temperature=3.0, alpha=0.2),
        kd_loss(z_s, z_t, None, temperature=3.0, alpha=1.0),
    )


def test_logit_mse_against_hand_computation():
    z_s = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    z_t = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # sample 1: 1 + 4 = 5; sample 2: 1 + 1 = 2 -> mean 0.5 * 3.5
    assert logit_mse_loss(z_s, z_t, alpha=1.0).item() == pytest.approx(1.75)
    y = torch.tensor([0, 1])
    mixed = logit_mse_loss(z_s, z_t, y, alpha=0.25).item()
    assert mixed == pytest.approx(0.25 * 1.75 + 0.75 * F.cross_entropy(z_s, y).item())


def test_hint_loss_against_hand_computation():
    regressed = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    hint = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # sample 1: 0 + 4 + 9 = 13; sample 2: 3 -> mean of 0.5 * (13, 3) = 4
    assert hint_loss(regressed, hint).item() == pytest.approx(4.0)
    maps = torch.ones(2, 3, 4, 4)
    assert hint_loss(maps, torch.zeros_like(maps)).item() == pytest.approx(0.5 * 48)


def test_regressor_shapes():
    assert isinstance(make_regressor(torch.zeros(2, 5), torch.zeros(2, 9)), nn.Linear)
    conv = make_regressor(torch.zeros(2, 3, 6, 6), torch.zeros(2, 8, 6, 6))
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    flat = make_regressor(torch.zeros(2, 3, 6, 6), torch.zeros(2, 10))
    assert flat(torch.zeros(4, 3, 6, 6)).shape == (4, 10)


# ---- config and compatibility -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"temperature": -2.0}, "temperature must be > 0, got -2.0"),
        ({"alpha": 1.5}, r"alpha must lie in \[0, 1\], got 1.5"),
        ({"alpha": -0.1}, r"alpha must lie in \[0, 1\], got -0.1"),
        ({"loss": "kl"}, "unknown distillation loss 'kl'; valid: hint, kd, logit-mse"),
        (
            {"transfer": "test"},
            "unknown transfer set 'test'; valid: augmented, train, unlabeled, val",
        ),
        ({"epochs": -1}, "epochs must be >= 0"),
        ({"noise": -1.0}, "noise must be >= 0"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**kwargs)


def test_config_round_trips_through_a_dict():
    cfg = DistillConfig(loss="hint", hint_layer="fc1", guided_layer="fc1", temperature=20.0)
    assert DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_student_must_match_teacher_inputs_and_outputs(teacher, digits):
    x = digits.train.x[:2]
    wrong_out = build_model("mlp:64-8-5", digits.input_shape, 5)
    with pytest.raises(
        ConfigError,
        match=r"the student outputs \(5,\) per sample but the "
        r"teacher outputs \(10,\); give the student 10 outputs",
    ):
        check_compatible(teacher, wrong_out, x)
    wrong_in = nn.Sequential(nn.Flatten(), nn.Linear(100, 10))
    with pytest.raises(
        ConfigError,
        match=r"the student does not accept the teacher's inputs of "
        r"shape \(1, 8, 8\)",
    ):
        distill(teacher, wrong_in, DistillConfig(epochs=1), digits, progress=False)


def test_unknown_hint_layer_lists_valid_names(teacher, digits):
    cfg = DistillConfig(loss="hint", hint_layer="fc9", guided_layer="fc1", epochs=1)
    with pytest.raises(
        ConfigError,
        match="the teacher has no layer named 'fc9'; valid "
        "--hint-layer names: flatten, fc1, relu1, drop1",
    ):
        distill(teacher, _student(digits), cfg, digits, progress=False)
    cfg = DistillConfig(loss="hint", hint_layer="fc1", epochs=1)
    with pytest.raises(ConfigError, match="needs the student layer; pass --guided-layer NAME"):
        distill(teacher, _student(digits), cfg, digits, progress=False)


# ---- transfer sets ------------------------------------------------------------------------


def test_transfer_sets_and_cached_teacher_outputs(teacher, digits):
    train = build_transfer_set("train", digits, teacher)
    assert torch.allclose(train.teacher_logits, teacher(digits.train.x))  # eval mode: no dropout
    assert torch.equal(train.y, digits.train.y)
    val = build_transfer_set("val", digits, teacher)
    assert val.describe() == {
        "kind": "val",
        "samples": len(digits.val),
        "labels_used": True,
        "teacher_outputs_cached": True,
    }
    unlabeled = build_transfer_set("unlabeled", digits, teacher)
    assert unlabeled.y is None
    augmented = build_transfer_set("augmented", digits, teacher)
    assert augmented.teacher_logits is None


def test_shift_images_is_an_exact_pixel_shift():
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.float32).reshape(2, 1, 5, 6)
    out = shift_images(x, torch.tensor([[1, 2], [-2, 0]]))
    # image 0 moved down 1, right 2; border pixels repeat the edge
    assert torch.equal(out[0, 0, 1:, 2:], x[0, 0, :-1, :-2])
    assert torch.equal(out[0, 0, 0, 2:], x[0, 0, 0, :-2])
    assert torch.equal(out[1, 0, :-2], x[1, 0, 2:])


def test_augment_is_seeded_and_bounded():
    x = torch.zeros(4, 1, 8, 8)
    a = augment(x, noise=0.5, shift=1, generator=torch.Generator().manual_seed(3))
    b = augment(x, noise=0.5, shift=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.std() > 0.3


def test_unlabeled_transfer_ignores_labels(teacher, digits):
    cfg = DistillConfig(transfer="unlabeled", epochs=2, alpha=0.5)
    scrambled = copy.copy(digits)
    scrambled.train = type(digits.train)(digits.train.x, digits.train.y.flip(0))
    a, b = _student(digits), _student(digits)
    distill(teacher, a, cfg, digits, progress=False)
    distill(teacher, b, cfg, scrambled, progress=False)
    x = digits.test.x[:16]
    assert torch.equal(a(x), b(x))


# ---- end to end ---------------------------------------------------------------------------


def test_distillation_trains_a_student(teacher, digits):
    student = _student(digits)
    result = distill(
        teacher, student, DistillConfig(epochs=8, temperature=4.0), digits, progress=False
    )
    assert len(result.history) == 8
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert evaluate(student, digits)["accuracy"] > 0.85
    assert not teacher.training


@pytest.mark.parametrize(("transfer", "epochs"), [("val", 25), ("augmented", 6)])
def test_other_transfer_sets_train(teacher, digits, transfer, epochs):
    student = _student(digits)
    cfg = DistillConfig(epochs=epochs, transfer=transfer)
    distill(teacher, student, cfg, digits, progress=False)
    assert evaluate(student, digits)["accuracy"] > 0.6


def test_logit_regression_pulls_logits_toward_the_teacher(teacher, digits):
    student = _student(digits)
    x = digits.train.x
    before = logit_mse_loss(student(x), teacher(x)).item()
    distill(
        teacher,
        student,
        DistillConfig(loss="logit-mse", alpha=1.0, lr=0.01, epochs=5),
        digits,
        progress=False,
    )
    assert logit_mse_loss(student(x), teacher(x)).item() < 0.5 * before


def test_hint_stage_fits_the_guided_layer_then_kd(teacher, digits):
    student = _student(digits, "mlp:64-32-10")
    cfg = DistillConfig(loss="hint", hint_layer="fc1", guided_layer="fc1", hint_epochs=3, epochs=5)
    result = distill(teacher, student, cfg, digits, progress=False)
    hint = [h["train_loss"] for h in result.hint_history]
    assert len(hint) == 3 and hint[-1] < hint[0]
    assert evaluate(student, digits)["accuracy"] > 0.85


def test_distilled_model_saves_and_loads(tmp_path, teacher, digits):
    student = _student(digits, "mlp:64-32h4-10")  # composes with hashed layers too
    distill(teacher, student, DistillConfig(epochs=2), digits, progress=False)
    x = digits.test.x[:10]
    run = load_run(save(student, tmp_path / "s"))
    assert torch.equal(run.model(x), student(x))


# ---- CLI ----------------------------------------------------------------------------------


def _cli(*args: str):
    return run_cli("distill", *args)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, teacher, digits):
    cfg = {"data": digits.spec, "normalization": digits.normalization}
    return save(teacher, tmp_path_factory.mktemp("distill") / "teacher", config=cfg)


def test_cli_distill_records_the_run(teacher_run, tmp_path, digits):
    out = tmp_path / "student"
    proc = _cli(
        "--teacher",
        str(teacher_run),
        "--student",
        "mlp:64-24-10",
        "--temperature",
        "5",
        "--alpha",
        "0.8",
        "--transfer",
        "unlabeled",
        "--optimizer",
        "adam",
        "--epochs",
        "3",
        "--out",
        str(out),
        "--json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    run = load_run(out)
    record = run.config["compression"]["distillation"]
    assert record["teacher"] == str(teacher_run) and record["student"] == "mlp:64-24-10"
    assert (record["loss"], record["temperature"], record["alpha"]) == ("kd", 5.0, 0.8)
    assert record["transfer"]["kind"] == "unlabeled" and not record["transfer"]["labels_used"]
    assert (record["config"]["optimizer"], record["config"]["lr"]) == ("adam", 0.001)
    assert run.config["model"]["name"] == "mlp:64-24-10"
    assert run.config["history"][-1]["step"] == "distill"
    assert evaluate(run.model, digits)["accuracy"] == pytest.approx(doc["student_test"]["accuracy"])


def test_cli_help_teaches():
    text = _cli("--help").stdout
    assert "--temperature 2 " in text and "kd (Hinton" in text and "transfer" in text
    assert "T = 2" in text  # the measured advice on choosing the temperature


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--student", "mlp:100-24-10"], "starts with 100 inputs but the data has 64"),
        (["--student", "mlp:64-24-5"], "ends with 5 outputs but the data has 10 classes"),
        (["--student", "mlp:64-24-10", "--temperature", "0"], "temperature must be > 0"),
        (["--student", "mlp:64-24-10", "--alpha", "1.5"], r"alpha must lie in \[0, 1\]"),
        (["--student", "mlp:64-24-10", "--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
        (
            [
                "--student",
                "mlp:64-24-10",
                "--loss",
                "hint",
                "--hint-layer",
                "fc7",
                "--guided-layer",
                "fc1",
            ],
            "valid --hint-layer names: flatten, fc1",
        ),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(teacher_run, tmp_path, args, message):
    out = tmp_path / "bad"
    proc = _cli("--teacher", str(teacher_run), *args, "--epochs", "1", "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and re.search(message, proc.stderr)
    assert not out.exists() and not list(tmp_path.glob(".bad*"))
