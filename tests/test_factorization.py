"""Low-rank factorization: SVD oracles, rank rules, edits that save/load, CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from brainsurgeon import state
from brainsurgeon.errors import ConfigError, UnsupportedLayerError
from brainsurgeon.factorization import (
    SVD,
    FactorizeConfig,
    LowRankConv2d,
    LowRankLinear,
    check_rank,
    compression_rate,
    factorize,
    max_shrinking_rank,
    rank_for_energy,
    rank_for_rate,
)
from brainsurgeon.factorization.layers import factored_layer
from brainsurgeon.models import build_model
from brainsurgeon.pruning.masks import set_mask
from brainsurgeon.runs import load_run, save
from brainsurgeon.training import TrainConfig, evaluate, fit
from conftest import run_cli


@pytest.fixture(scope="module")
def trained_mlp(digits):
    torch.manual_seed(0)
    model = build_model("mlp:64-48-32-10", digits.input_shape, digits.num_classes)
    fit(model, digits, TrainConfig(epochs=4), progress=False)
    return model


def _run_config(data):
    return {"data": data.spec, "normalization": data.normalization}


@pytest.mark.parametrize("shape", [(7, 12), (12, 7)])
def test_full_rank_linear_reproduces_outputs(shape):
    torch.manual_seed(0)
    layer = nn.Linear(shape[1], shape[0])
    new = factored_layer("fc", layer, SVD.of(layer.weight), min(shape))
    x = torch.randn(9, shape[1])
    assert isinstance(new, LowRankLinear)
    assert torch.allclose(new(x), layer(x), atol=1e-5)


def test_full_rank_conv_reproduces_outputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    matrix = conv.weight.reshape(5, -1)
    new = factored_layer("conv", conv, SVD.of(matrix), 5)
    x = torch.randn(2, 3, 9, 9)
    assert isinstance(new, LowRankConv2d) and new.up.kernel_size == (1, 1)
    assert torch.allclose(new(x), conv(x), atol=1e-5)


def test_truncated_layer_is_the_best_rank_k_approximation():
    torch.manual_seed(0)
    layer = nn.Linear(10, 8)
    svd = SVD.of(layer.weight)
    new = factored_layer("fc", layer, svd, 3)
    product = new.up.weight @ new.down.weight
    u, s, vh = torch.linalg.svd(layer.weight.detach().double())
    oracle = (u[:, :3] * s[:3]) @ vh[:3]
    assert torch.allclose(product.double(), oracle, atol=1e-5)
    # Eckart-Young: the Frobenius error is the norm of the dropped singular values
    err = torch.linalg.norm(layer.weight.detach().double() - oracle)
    assert err.item() == pytest.approx(s[3:].norm().item(), rel=1e-6)
    assert svd.energy(3) == pytest.approx((s[:3].pow(2).sum() / s.pow(2).sum()).item())


def test_conv_truncation_matches_the_im2col_matrix_oracle():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    matrix = conv.weight.detach().reshape(6, -1)
    new = factored_layer("conv", conv, SVD.of(matrix), 2)
    u, s, vh = torch.linalg.svd(matrix.double())
    low = ((u[:, :2] * s[:2]) @ vh[:2]).float().reshape(conv.weight.shape)
    x = torch.randn(2, 4, 7, 7)
    expected = nn.functional.conv2d(x, low, conv.bias, padding=1)
    assert torch.allclose(new(x), expected, atol=1e-5)


def test_rate_formula():
    assert compression_rate(300, 784, 20) == pytest.approx(300 * 784 / (20 * 1085))
    assert compression_rate(10, 100, 1) == pytest.approx(1000 / 111)
    layer = factored_layer("fc", nn.Linear(784, 300), SVD.of(torch.randn(300, 784)), 20)
    assert sum(p.numel() for p in layer.parameters()) == 20 * (300 + 784) + 300


def test_rank_rules_against_brute_force():
    s = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5])
    for energy in (0.1, 0.5, 0.9, 0.97, 1.0):
        total = float((s**2).sum())
        brute = next(k for k in range(1, 6) if float((s[:k] ** 2).sum()) >= energy * total - 1e-9)
        assert rank_for_energy(s, energy) == brute
    for m, n, rate in [(300, 784, 4.0), (100, 300, 2.5), (10, 100, 3.0), (10, 100, 20.0)]:
        brute = max(
            [k for k in range(1, min(m, n) + 1) if compression_rate(m, n, k) >= rate], default=0
        )
        assert rank_for_rate(m, n, rate) == brute
    assert max_shrinking_rank(10, 100) == 9 and compression_rate(10, 100, 9) > 1
    assert compression_rate(10, 100, 10) <= 1


def test_a_rank_that_would_grow_the_layer_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"rank 10 for fc3 \(10 x 100\) would grow the layer.*"
        r"use a rank <= 9",
    ):
        check_rank("fc3", 10, 100, 10)
    with pytest.raises(ConfigError, match=r"outside \[1, min\(m, n\)\] = \[1, 10\]"):
        check_rank("fc3", 10, 100, 11)


def test_named_layer_with_growing_rank_is_refused_and_model_untouched(trained_mlp):
    model = copy.deepcopy(trained_mlp)
    with pytest.raises(ConfigError, match="rank 10 for fc3 .* would grow the layer"):
        factorize(model, FactorizeConfig(rank=10, layers=("fc2", "fc3")))
    assert isinstance(model.fc2, nn.Linear) and not state.edits_of(model)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "choose exactly one of energy, rank, ratio, budget; got none"),
        ({"energy": 0.9, "rank": 3}, "got energy, rank"),
        ({"energy": 0.0}, r"energy must lie in \(0, 1\], got 0.0"),
        ({"energy": 1.2}, r"energy must lie in \(0, 1\], got 1.2"),
        ({"rank": 0}, "rank must be > 0, got 0"),
        ({"rank": -3}, "rank must be > 0, got -3"),
        ({"ratio": 1.0}, "ratio must be > 1"),
        ({"budget": 1.0}, r"budget must lie in \(0, 1\)"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FactorizeConfig(**kwargs)


def test_unknown_and_unsupported_layers(trained_mlp):
    with pytest.raises(
        ConfigError, match="no layer named 'fc9'; layers that can be factorized: fc1, fc2, fc3"
    ):
        factorize(copy.deepcopy(trained_mlp), FactorizeConfig(rank=2, layers=("fc9",)))
    hashed = build_model("mlp:64-32h4-10", (1, 8, 8), 10)
    with pytest.raises(
        UnsupportedLayerError,
        match="fc1 is a HashedLinear; factorization supports Linear, Conv2d layers only",
    ):
        factorize(hashed, FactorizeConfig(rank=2, layers=("fc1",)))


def test_energy_mode_reports_ranks_and_skips_layers_it_cannot_shrink(trained_mlp):
    model = copy.deepcopy(trained_mlp)
    result = factorize(model, FactorizeConfig(energy=0.8))
    for p in result.layers:
        s = torch.linalg.svd(trained_mlp.get_submodule(p.name).weight.detach().double())[1]
        k = rank_for_energy(s, 0.8)
        if compression_rate(p.m, p.n, k) > 1:
            assert p.rank == k and p.energy >= 0.8
            assert isinstance(model.get_submodule(p.name), LowRankLinear)
        else:
            assert p.rank == 0 and "would grow" in p.reason
            assert isinstance(model.get_submodule(p.name), nn.Linear)
    assert any(p.rank for p in result.layers) and result.note == ""


def test_energy_that_removes_nothing_says_so_and_leaves_the_model(trained_mlp):
    model = copy.deepcopy(trained_mlp)
    result = factorize(model, FactorizeConfig(energy=0.999))
    assert result.factorized == [] and all("would grow" in p.reason for p in result.layers)
    assert result.note.startswith("nothing factorized: no layer shrinks with energy=0.999")
    assert result.to_dict()["note"] == result.note
    assert result.to_dict()["weights_after"] == result.to_dict()["weights_before"]
    for (n, a), (_, b) in zip(
        model.state_dict().items(), trained_mlp.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), n
    with pytest.raises(ConfigError, match="nothing to factorize with rank=48 .*would grow"):
        factorize(copy.deepcopy(trained_mlp), FactorizeConfig(rank=48))


def test_ratio_mode_meets_the_rate_everywhere(trained_mlp):
    model = copy.deepcopy(trained_mlp)
    result = factorize(model, FactorizeConfig(ratio=2.0))
    for p in result.layers:
        assert p.rank == rank_for_rate(p.m, p.n, 2.0) and p.rate >= 2.0


def test_budget_mode_meets_the_budget_and_needs_data(trained_mlp, digits):
    with pytest.raises(ConfigError, match="budget mode .* needs data"):
        factorize(copy.deepcopy(trained_mlp), FactorizeConfig(budget=0.3))
    model = copy.deepcopy(trained_mlp)
    result = factorize(model, FactorizeConfig(budget=0.3), digits)
    cost = sum(p.rank * (p.m + p.n + 1) if p.rank else p.m * p.n for p in result.layers)
    assert cost <= 0.3 * sum(p.m * p.n for p in result.layers)
    assert evaluate(model, digits)["accuracy"] > 0.5
    with pytest.raises(ConfigError, match="rank 1 everywhere still needs"):
        factorize(copy.deepcopy(trained_mlp), FactorizeConfig(budget=0.001), digits)


def test_factorized_mlp_saves_loads_and_prunes(tmp_path, trained_mlp, digits):
    model = copy.deepcopy(trained_mlp)
    factorize(model, FactorizeConfig(rank=8, layers=("fc1", "fc2")))
    set_mask(model.fc1.down, "weight", model.fc1.down.weight.abs() > 0.05)  # composes with pruning
    x = digits.test.x[:32]
    expected = model(x)
    run = load_run(save(model, tmp_path / "run", config=_run_config(digits)))
    assert torch.equal(run.model(x), expected)
    assert [e["module"] for e in state.edits_of(run.model)] == ["fc1", "fc2"]
    assert [e["module"] for e in state.edits_of(copy.deepcopy(model))] == ["fc1", "fc2"]


def test_factorized_lenet5_saves_and_loads(tmp_path, digits):
    torch.manual_seed(0)
    model = build_model("lenet5", digits.input_shape, digits.num_classes)
    result = factorize(model, FactorizeConfig(ratio=2.0))
    assert {p.name for p in result.layers if p.rank} >= {"conv2", "fc1"}
    assert isinstance(model.conv2, LowRankConv2d)
    x = digits.test.x[:8]
    run = load_run(save(model, tmp_path / "lenet5"))
    assert torch.equal(run.model(x), model(x))


def _cli(*args: str):
    return run_cli("factorize", *args)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained_mlp, digits):
    return save(
        trained_mlp,
        tmp_path_factory.mktemp("fact") / "run",
        config=_run_config(digits),
        metrics=evaluate(trained_mlp, digits),
    )


def test_cli_factorize_json_and_reload(run_dir, tmp_path, digits):
    out = tmp_path / "svd"
    proc = _cli(
        str(run_dir),
        "--rank",
        "8",
        "--layers",
        "fc1,fc2",
        "--finetune-epochs",
        "1",
        "--out",
        str(out),
        "--json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(p["name"], p["rank"]) for p in doc["layers"]] == [("fc1", 8), ("fc2", 8)]
    assert doc["layers"][0]["rate"] == pytest.approx(compression_rate(48, 64, 8))
    run = load_run(out)
    assert run.config["compression"]["factorization"]["layers"][1]["rank"] == 8
    assert run.config["history"][-1]["step"] == "factorize"
    assert evaluate(run.model, digits)["accuracy"] == pytest.approx(doc["test"]["accuracy"])


def test_cli_table_and_help(run_dir, tmp_path):
    proc = _cli(str(run_dir), "--ratio", "2", "--out", str(tmp_path / "e"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "rank" in proc.stdout and "rate" in proc.stdout and "fc1" in proc.stdout
    helptext = _cli("--help").stdout
    assert "--energy 0.95" in helptext and "m n / (k (m + n + 1))" in helptext


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rank", "0"], "rank must be > 0"),
        (["--rank", "10", "--layers", "fc3"], "would grow the layer"),
        (["--energy", "1.5"], r"energy must lie in \(0, 1\]"),
        (["--rank", "4", "--layers", "nope"], "no layer named 'nope'"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(run_dir, tmp_path, args, message):
    out = tmp_path / "bad"
    proc = _cli(str(run_dir), *args, "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and __import__("re").search(message, proc.stderr)
    assert not out.exists() and not list(tmp_path.glob(".bad*"))


def test_factorized_then_pruned_and_quantized_round_trips(tmp_path, trained_mlp, digits):
    from brainsurgeon.pruning import PruneConfig, prune
    from brainsurgeon.quantization import KMeansConfig, quantize

    model = copy.deepcopy(trained_mlp)
    factorize(model, FactorizeConfig(rank=8, layers=("fc1", "fc2")))
    prune(model, PruneConfig(criterion="magnitude", amount=0.5), progress=False)
    assert float((model.fc1.down.weight == 0).float().mean()) > 0.2
    quantize(model, KMeansConfig(bits=4))
    x = digits.test.x[:16]
    run = load_run(save(model, tmp_path / "all", config=_run_config(digits)))
    assert torch.allclose(run.model(x), model(x), atol=1e-6)


def test_pruned_layer_factorizes_its_effective_weight(trained_mlp):
    model = copy.deepcopy(trained_mlp)
    set_mask(model.fc2, "weight", model.fc2.weight.abs() > 0.05)
    masked, bias = model.fc2.weight.detach().clone(), model.fc2.bias.detach().clone()
    factorize(model, FactorizeConfig(rank=18, layers=("fc2",)))  # 32 x 48: largest shrinking
    u, s, vh = torch.linalg.svd(masked.double())
    oracle = ((u[:, :18] * s[:18]) @ vh[:18]).float()
    x = torch.randn(4, 48)
    assert torch.allclose(model.fc2(x), x @ oracle.T + bias, atol=1e-5)
    assert isinstance(model.fc2, LowRankLinear) and not state.describe(model)
