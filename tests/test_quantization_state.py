"""Quantizer state: contract over the registry, pruning composition, accounting, gptq, int8."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from brainsurgeon.errors import ConfigError, UnsupportedLayerError
from brainsurgeon.models import build_model
from brainsurgeon.pruning.masks import find_mask, set_mask
from brainsurgeon.quantization import QUANTIZERS, quant_config, quantize, report
from brainsurgeon.quantization.base import QuantParametrization
from brainsurgeon.quantization.int8 import compare_latency, to_int8
from brainsurgeon.quantization.methods.gptq import GPTQ, GPTQConfig
from brainsurgeon.quantization.methods.uniform import fake_quantize
from brainsurgeon.quantization.registry import LayerPlan
from brainsurgeon.runs import load_run, save
from brainsurgeon.state import make_permanent, parametrizations_of
from brainsurgeon.training import TrainConfig, evaluate, fit

# small enough for every method: fan-ins 64, 32, 16 divisible by the block width 4
OPTIONS = {
    "binary": {},
    "ternary": {},
    "uniform": {"bits": 4},
    "kmeans": {"bits": 3},
    "product": {"bits": 3, "block_width": 4},
    "residual": {"bits": 2, "stages": 2, "block_width": 2},
    "gptq": {"bits": 3, "samples": 256},
}


@pytest.fixture(scope="module")
def model(digits):
    torch.manual_seed(0)
    m = build_model("mlp:64-32-16-10", digits.input_shape, digits.num_classes)
    fit(m, digits, TrainConfig(epochs=4), progress=False)
    return m


def _outputs(m, digits):
    with torch.no_grad():
        return m.eval()(digits.test.x[:64])


def test_every_registered_quantizer_is_covered():
    assert sorted(OPTIONS) == QUANTIZERS.names()


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_contract_state_dict_deepcopy_save_load_permanent(method, model, digits, tmp_path):
    m = copy.deepcopy(model)
    result = quantize(m, quant_config(method, **OPTIONS[method]), digits)
    out = _outputs(m, digits)
    assert not torch.allclose(out, _outputs(model, digits))  # it did something
    assert evaluate(m, digits)["accuracy"] > 0.3  # chance is 0.1; binary on a tiny net is weak
    assert result.storage["total"]["bits_per_weight"] < 32
    # deepcopy and state_dict round trip
    twin = copy.deepcopy(m)
    assert torch.equal(_outputs(twin, digits), out)
    # save / load through a run directory (the parametrizations are re-created)
    save(m, tmp_path / "run", config={"compression": {"quantization": result.summary()}})
    run = load_run(tmp_path / "run")
    assert torch.equal(_outputs(run.model, digits), out)
    kinds = [p.kind for p in parametrizations_of(run.model.fc1, "weight")]
    assert len(kinds) == 1 and isinstance(
        run.model.fc1.parametrizations.weight[0], QuantParametrization
    )
    assert run.config["compression"]["quantization"]["config"]["method"] == method
    # quantizing twice is refused; make_permanent bakes the dequantized weights in
    with pytest.raises(ConfigError, match="already quantized"):
        quantize(twin, quant_config(method, **OPTIONS[method]), digits)
    make_permanent(twin)
    assert "fc1.weight" in twin.state_dict()
    assert torch.allclose(_outputs(twin, digits), out, atol=1e-6)
    # idempotence: quantizing the baked weights again changes (almost) nothing
    if method in ("uniform", "binary", "ternary", "kmeans"):
        again = copy.deepcopy(twin)
        quantize(again, quant_config(method, **OPTIONS[method]), digits)
        assert torch.allclose(_outputs(again, digits), out, atol=1e-5)


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_prune_then_quantize_keeps_zeros(method, model, digits):
    m = copy.deepcopy(model)
    keeps = {}
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(m, name)
        keep = layer.weight.detach().abs() > layer.weight.detach().abs().median()
        set_mask(layer, "weight", keep)
        keeps[name] = keep
    quantize(m, quant_config(method, **OPTIONS[method]), digits)
    for name, keep in keeps.items():
        w = getattr(m, name).weight
        assert (w[~keep] == 0).all(), name
        assert find_mask(getattr(m, name)) is not None
    if method == "kmeans":  # zeros take no centroid: codes only for the kept half
        q = m.fc1.parametrizations.weight[1]
        assert q.coded == int(keeps["fc1"].sum())
        assert (q.indices[~keeps["fc1"]] == q.codebook.numel()).all()
        assert (q.indices[keeps["fc1"]] < q.codebook.numel()).all()
        assert torch.count_nonzero(m.fc1.weight) == int(keeps["fc1"].sum())


@pytest.mark.parametrize("method", ["kmeans", "uniform", "product"])
def test_quantize_then_prune_keeps_zeros_and_codes(method, model, digits):
    m = copy.deepcopy(model)
    quantize(m, quant_config(method, **OPTIONS[method]), digits)
    before = m.fc2.weight.detach().clone()
    keep = torch.rand(before.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    set_mask(m.fc2, "weight", keep)
    assert (m.fc2.weight[~keep] == 0).all()
    assert torch.equal(m.fc2.weight[keep], before[keep])
    fit(m, digits, TrainConfig(epochs=1, lr=0.01), progress=False)
    assert (m.fc2.weight[~keep] == 0).all()


def test_kmeans_finetuning_keeps_tied_weights_tied(model, digits):
    m = copy.deepcopy(model)
    result = quantize(
        m, quant_config("kmeans", bits=2, finetune_epochs=2, finetune_lr=0.01), digits
    )
    assert len(result.history) == 2
    for name in ("fc1", "fc2", "fc3"):
        q = getattr(m, name).parametrizations.weight[0]
        w = getattr(m, name).weight.detach()
        assert len(torch.unique(w)) <= 4
        for c in range(4):
            tied = w[q.indices == c]
            assert torch.all(tied == q.codebook[c].detach()), (name, c)
    # the centroids moved, the float original got no gradient and did not
    fresh = copy.deepcopy(model)
    quantize(fresh, quant_config("kmeans", bits=2))
    moved = m.fc1.parametrizations.weight[0].codebook
    assert not torch.allclose(moved, fresh.fc1.parametrizations.weight[0].codebook)
    assert torch.equal(m.fc1.parametrizations.weight.original, model.fc1.weight)


def test_qat_trains_float_weights_and_stays_on_grid(model, digits):
    m = copy.deepcopy(model)
    quantize(m, quant_config("uniform", bits=3, finetune_epochs=1), digits)
    orig = m.fc1.parametrizations.weight.original
    assert not torch.equal(orig, model.fc1.weight)
    q = m.fc1.parametrizations.weight[0]
    codes = q.integer(orig.detach())
    recon = (codes - q.zero_point[:, None]) * q.scale[:, None]
    assert torch.allclose(m.fc1.weight, recon, atol=1e-6)
    assert max(len(torch.unique(row)) for row in m.fc1.weight.detach()) <= 8


# ------------------------------------------------------------------------------ accounting


def test_kmeans_storage_matches_deep_compression_rate(model):
    m = copy.deepcopy(model)
    quantize(m, quant_config("kmeans", bits=3))
    rep = report(m)
    row = next(r for r in rep["layers"] if r["layer"] == "fc1.weight")
    n, k, b = 64 * 32, 8, 32
    assert row["ratio"] == pytest.approx(n * b / (n * math.log2(k) + k * b))
    assert row["index_bytes"] == math.ceil(n * 3 / 8) and row["codebook_bytes"] == k * 4
    assert row["bits_per_weight"] == pytest.approx((n * 3 + k * 32) / n)
    total = rep["total"]
    assert total["coded"] == 64 * 32 + 32 * 16 + 16 * 10
    assert total["bytes"] == sum(r["bytes"] for r in rep["layers"])
    assert rep["float_params"] == 32 + 16 + 10  # biases
    assert rep["fp32_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    assert rep["model_bytes"] == total["bytes"] + 4 * 58


def test_product_and_residual_storage_formulas(model):
    m = copy.deepcopy(model)
    quantize(m, quant_config("product", bits=3, block_width=4))
    s = m.fc1.parametrizations.weight[0].storage()
    rows, cols, d, k = 32, 64, 4, 8
    blocks = cols // d
    assert s["total_bits"] == rows * blocks * 3 + 32 * k * cols
    assert s["ratio"] == pytest.approx(
        32 * rows * cols / (rows * blocks * math.log2(k) + 32 * k * cols)
    )
    m = copy.deepcopy(model)
    quantize(m, quant_config("residual", bits=2, stages=3, block_width=2))
    s = m.fc1.parametrizations.weight[0].storage()
    t, k, d = 3, 4, 2
    vectors = rows * cols // d
    assert s["total_bits"] == t * (vectors * 2 + 32 * k * d)
    assert s["ratio"] == pytest.approx(
        32 * rows * cols / (t * (rows * cols * math.log2(k) / d + 32 * k * d))
    )


def test_uniform_binary_ternary_storage(model):
    for method, bits, per_weight in (("uniform", 4, 4), ("binary", 1, 1), ("ternary", 2, 2)):
        m = copy.deepcopy(model)
        quantize(m, quant_config(method, bits=bits))
        s = m.fc2.parametrizations.weight[0].storage()
        extra = 16 * 32 + (16 * 4 if method == "uniform" else 0)  # scales (+ zero points)
        assert s["index_bits"] == 16 * 32 * per_weight
        assert s["codebook_bits"] == extra
    m = copy.deepcopy(model)
    quantize(m, quant_config("uniform", bits=8, symmetric=True, granularity="per-tensor"))
    assert m.fc2.parametrizations.weight[0].storage()["codebook_bits"] == 32


# ------------------------------------------------------------------------------ gptq


def test_gptq_beats_round_to_nearest_on_the_layer_objective():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 24, generator=g) @ torch.randn(24, 24, generator=g)  # correlated
    layer = nn.Linear(24, 12)
    H = 2 * X.T @ X / X.shape[0]
    from brainsurgeon.solvers import gptq as solve

    config = GPTQConfig(bits=3)
    plan = LayerPlan("fc", layer, 3)
    W = layer.weight.detach().clone()
    GPTQ.solve_layer(plan, H, config, solve)
    Wq = layer.weight.detach()
    q = layer.parametrizations.weight[0]
    rtn = fake_quantize(W, q.scale[:, None], q.zero_point[:, None], 3, False)
    assert torch.allclose(q(Wq), Wq, atol=1e-6)  # GPTQ's output lies on the grid
    err = lambda V: ((V - W) @ X.T).pow(2).sum().item()  # noqa: E731
    assert err(Wq) < 0.8 * err(rtn)


def test_gptq_handles_conv_layers_through_unfolded_inputs(digits):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    before = m(digits.test.x[:32]).detach()
    quantize(m, quant_config("gptq", bits=4, samples=128), digits)
    q = m[0].parametrizations.weight[0]
    assert isinstance(q, QuantParametrization) and q.kind == "uniform"
    w = m[0].weight.detach()
    assert torch.allclose(q(w), w, atol=1e-6)  # on the grid
    after = m(digits.test.x[:32]).detach()
    assert (after - before).abs().max() < 0.5 * before.abs().max()


# ------------------------------------------------------------------------------ int8


def test_int8_matches_float_and_reports_latency(model):
    q = to_int8(model)
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(q(x), model(x), atol=0.2)
    assert "DynamicQuantizedLinear" in str(q)
    rows = compare_latency(model, (1, 8, 8), batch_sizes=(1, 4), min_run_time=0.01)
    assert [r["batch"] for r in rows] == [1, 4]
    assert all(r["fp32_ms"] > 0 and r["int8_ms"] > 0 and r["speedup"] > 0 for r in rows)
    conv_only = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(UnsupportedLayerError, match="Linear layers only"):
        to_int8(conv_only)


# ------------------------------------------------------------------------------ bad input


def test_bad_input_is_refused_before_anything_changes(model, digits):
    m = copy.deepcopy(model)
    cases = [
        (quant_config("kmeans", bits=5, per_layer_bits={"fc3": 8}), "k=256 .* 160"),
        (quant_config("product", bits=3, block_width=5), "does not divide the 64"),
        (quant_config("product", bits=5, block_width=4), "k=32 .* 16 vectors"),
        (quant_config("kmeans", per_layer_bits={"conv": 4}), "matches no quantized layer"),
    ]
    for config, message in cases:
        with pytest.raises(ConfigError, match=message):
            quantize(m, config)
    with pytest.raises(ConfigError, match="gptq .* needs data for calibration"):
        quantize(m, quant_config("gptq"))
    with pytest.raises(ConfigError, match="needs data for fine-tuning"):
        quantize(m, quant_config("kmeans", finetune_epochs=1))
    assert not any(parametrizations_of(mod, "weight") for mod in (m.fc1, m.fc2, m.fc3))
    with pytest.raises(ConfigError, match=r"uniform needs bits between 2 and 8, got 9"):
        quant_config("uniform", bits=9)
    with pytest.raises(ConfigError, match=r"binary needs bits 1, got 2"):
        quant_config("binary", bits=2)
    with pytest.raises(ConfigError, match="unknown quantizer 'kmean'.*Did you mean 'kmeans'"):
        quant_config("kmean")
    with pytest.raises(ConfigError, match="unknown init 'cdf'; valid: linear, random, density"):
        quant_config("kmeans", init="cdf")


def test_unsupported_layer_types_are_named():
    m = nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(24, 3))
    with pytest.raises(
        UnsupportedLayerError, match=r"gptq cannot quantize 0 \(Conv1d\).*--exclude 0"
    ):
        quantize(m, quant_config("gptq"), data=None)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(UnsupportedLayerError, match="groups=2"):
        quantize(grouped, quant_config("gptq"), data=None)
