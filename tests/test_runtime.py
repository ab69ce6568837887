"""Inference runtimes: to_inference bakes masks and quantizers (outputs equal the parametrized
model's, nothing left parametrized, the original untouched); SparseLinear equals nn.Linear
(the oracle) on random sparse weights, zero rows, all-zero weights, no bias, 3-D input."""

from __future__ import annotations

import copy
import importlib.util
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import brainsurgeon
from brainsurgeon.errors import ConfigError
from brainsurgeon.pruning.masks import set_mask
from brainsurgeon.runtime import (
    DEFAULT_MIN_SPARSITY,
    RUNTIMES,
    SparseLinear,
    register_runtime,
    to_inference,
    weight_sparsity,
)
from brainsurgeon.state import EDITS_ATTR, SPEC_ATTR


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _sparse_linear(out_f: int, in_f: int, sparsity: float, *, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_f, in_f, generator=g))
        if bias:
            linear.bias.copy_(torch.randn(out_f, generator=g))
        linear.weight[torch.rand(out_f, in_f, generator=g) < sparsity] = 0
    return linear


def _pruned_mlp(amounts: tuple[float, ...] = (0.95, 0.5, 0.0)) -> nn.Sequential:
    """Three Linear layers with masks keeping (1 - amount) of each weight."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
    model.append(nn.Linear(16, 4))
    g = torch.Generator().manual_seed(1)
    for layer, amount in zip(model[::2], amounts, strict=True):
        set_mask(layer, "weight", torch.rand(layer.weight.shape, generator=g) >= amount)
    return model


def _parametrized(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_dense_linear(sparsity, bias):
    linear = _sparse_linear(24, 40, sparsity, bias=bias)
    with torch.no_grad():
        linear.weight[3] = 0  # an all-zero row
    sparse = SparseLinear.from_dense(linear)
    assert torch.equal(sparse.dense_weight(), linear.weight.detach())
    for shape in [(1, 40), (7, 40), (40,), (2, 3, 40), (0, 40)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(sparse(x), linear(x), rtol=1e-5, atol=1e-5)


def test_sparse_linear_runs_under_inference_mode_and_with_grad_inputs():
    linear = _sparse_linear(16, 32, 0.9)
    sparse = SparseLinear.from_dense(linear)
    x = torch.randn(5, 32, requires_grad=True)
    with torch.inference_mode():
        for rows in (x[:1], x):
            torch.testing.assert_close(sparse(rows), linear(rows))
    torch.testing.assert_close(sparse(x[:1]), linear(x[:1]).detach())  # no torch.no_grad
    assert not sparse(x).requires_grad


def test_sparse_linear_memory_is_smaller_and_repr_shows_nnz():
    linear = _sparse_linear(256, 512, 0.9)
    sparse = SparseLinear.from_dense(linear)
    nnz = int(torch.count_nonzero(linear.weight))
    assert sparse.nnz == nnz
    assert sparse.col_indices.dtype == torch.int32
    assert sparse.nbytes() == 4 * 257 + 8 * nnz + 4 * 256
    dense_bytes = 4 * (256 * 512 + 256)
    assert sparse.nbytes() < 0.25 * dense_bytes
    assert f"nnz={nnz}" in repr(sparse) and f"density={nnz / (256 * 512):.4f}" in repr(sparse)


def test_sparse_linear_survives_deepcopy_pickle_and_dtype_moves():
    linear = _sparse_linear(8, 12, 0.7)
    sparse = SparseLinear.from_dense(linear)
    x = torch.randn(1, 12)
    sparse(x)  # builds the cached views
    for clone in (copy.deepcopy(sparse), pickle.loads(pickle.dumps(sparse))):
        with torch.no_grad():
            clone.values.mul_(2)  # the clone's kernels read the clone's own buffers
            expected = torch.nn.functional.linear(x, 2 * linear.weight, linear.bias)
            torch.testing.assert_close(clone(x), expected.detach())
    double = copy.deepcopy(sparse).double()
    torch.testing.assert_close(double(x.double()), sparse(x).double(), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="holds torch.float64 weights but got a torch.float32"):
        double(x)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(\*, 12\), got \(1, 5\)"):
        sparse(torch.randn(1, 5))


def test_sparse_linear_rejects_buffers_that_do_not_fit():
    good = SparseLinear.from_dense(_sparse_linear(4, 6, 0.5))
    parts = (good.crow_indices, good.col_indices, good.values)
    with pytest.raises(ValueError, match=r"do not fit a \(5, 6\) weight.*from_dense"):
        SparseLinear(*parts, (5, 6))
    bad_cols = good.col_indices.clone()
    bad_cols[0] = 99
    with pytest.raises(ValueError, match="invalid CSR buffers"):
        SparseLinear(good.crow_indices, bad_cols, good.values, (4, 6))


def test_to_inference_equals_masked_model_and_leaves_it_untouched():
    model = _pruned_mlp()
    model.__dict__[SPEC_ATTR] = {"arch": "test"}
    model.__dict__[EDITS_ATTR] = [{"kind": "x"}]
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(9, 20)
    expected = model(x).detach()
    for runtime in ("dense", "sparse"):
        fast = to_inference(model, runtime)
        assert not _parametrized(fast) and not fast.training
        assert not any(p.requires_grad for p in fast.parameters())
        assert fast.__dict__[SPEC_ATTR] == {"arch": "test"}
        assert fast.__dict__[EDITS_ATTR] == [{"kind": "x"}]
        torch.testing.assert_close(fast(x), expected)
    assert _parametrized(model) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_to_inference_bakes_a_kmeans_quantizer():
    data = brainsurgeon.data.load_data("digits", progress=False)
    torch.manual_seed(0)
    model = brainsurgeon.build_model("mlp:64-32-10", data.input_shape, data.num_classes)
    brainsurgeon.quantize(model, brainsurgeon.quant_config("kmeans", bits=3), data)
    assert _parametrized(model)
    x = data.test.x[:16]
    model.eval()
    expected = model(x).detach()
    fast = to_inference(model)
    assert not _parametrized(fast)
    torch.testing.assert_close(fast(x), expected)
    linears = [m for m in fast.modules() if isinstance(m, nn.Linear)]
    assert all(torch.unique(m.weight).numel() <= 2**3 for m in linears)


def test_sparse_runtime_converts_only_layers_above_the_threshold():
    model = _pruned_mlp((0.95, 0.5, 0.0))
    default = to_inference(model, "sparse")
    assert [type(m) for m in default[::2]] == [SparseLinear, nn.Linear, nn.Linear]
    assert weight_sparsity(model[0].weight) >= DEFAULT_MIN_SPARSITY
    lower = to_inference(model, "sparse", min_sparsity=0.4)
    assert [type(m) for m in lower[::2]] == [SparseLinear, SparseLinear, nn.Linear]
    everything = to_inference(model, "sparse", min_sparsity=0.0)
    assert all(type(m) is SparseLinear for m in everything[::2])
    x = torch.randn(3, 20)
    torch.testing.assert_close(everything(x), model(x).detach())


def test_sparse_runtime_leaves_attention_projections_alone():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    model = nn.Sequential(layer, nn.Linear(8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    out = to_inference(model, "sparse", min_sparsity=0.0)
    assert type(out[1]) is SparseLinear
    assert all(type(m) is not SparseLinear for m in out[0].modules())
    out(torch.randn(2, 4, 8))


def test_inplace_converts_the_model_itself():
    model = _pruned_mlp()
    out = to_inference(model, "sparse", inplace=True)
    assert out is model and not _parametrized(model)
    assert type(model[0]) is SparseLinear


def test_unknown_runtime_and_bad_threshold_teach():
    with pytest.raises(
        ConfigError,
        match="unknown runtime 'sprase'; valid: dense, int8, native, onnx, onnx-int8, sparse",
    ):
        to_inference(_pruned_mlp(), "sprase")
    with pytest.raises(ConfigError, match="min_sparsity applies to runtime='sparse' only"):
        to_inference(_pruned_mlp(), "dense", min_sparsity=0.5)
    with pytest.raises(ConfigError, match=r"min_sparsity must lie in \[0, 1\], got 1.5"):
        to_inference(_pruned_mlp(), "sparse", min_sparsity=1.5)


def test_a_registered_runtime_receives_a_baked_eval_copy():
    seen = {}

    @register_runtime("test-probe", "records what a runtime receives")
    def probe(model, min_sparsity):
        seen.update(parametrized=_parametrized(model), training=model.training)
        return model

    try:
        to_inference(_pruned_mlp(), "test-probe")
    finally:
        RUNTIMES._items.pop("test-probe")
        RUNTIMES._descriptions.pop("test-probe")
    assert seen == {"parametrized": False, "training": False}


def test_int8_runtime_wraps_dynamic_quantization():
    model = _pruned_mlp()
    out = to_inference(model, "int8")
    assert all(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in out[::2])
    x = torch.randn(4, 20)
    assert (out(x) - model(x)).abs().max() < 0.5


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).parents[1] / "benchmarks" / "sparse_runtime.py"
    spec = importlib.util.spec_from_file_location("bench_sparse_runtime", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_kernels_all_compute_the_layer(bench):
    layer = bench.masked_linear(16, 24, 0.9)
    assert weight_sparsity(layer.weight) >= 0.9
    for batch in (1, 5):
        x = torch.randn(batch, 24)
        for name, fn in bench.kernels(layer).items():
            torch.testing.assert_close(fn(x), layer(x).detach(), msg=name)


def test_benchmark_crossover_is_where_sparse_wins_from_then_on(bench):
    def rows(speedups):
        return [
            {"layer": "L", "sparsity": s, "batch": b, "speedup": v}
            for s, v in speedups.items()
            for b in bench.BATCHES
        ]

    assert bench.crossover(rows({0.5: 0.4, 0.7: 1.1, 0.8: 0.9, 0.9: 2.0}))["L"]["batch_1"] == 0.9
    assert bench.crossover(rows({0.5: 0.4, 0.9: 0.9}))["L"]["batch_64"] is None
