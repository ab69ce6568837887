"""Block-by-block calibration of the layer-wise solvers: equal to the whole-model path."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from brainsurgeon.curvature.blockwise import plan
from brainsurgeon.curvature.chain import find_chain
from brainsurgeon.data.core import Dataset
from brainsurgeon.errors import ConfigError
from brainsurgeon.pruning.criteria import SaliencyContext, make_criterion
from brainsurgeon.pruning.masks import set_mask


class Encoder(nn.Module):
    """Linear stem (prefix) -> 2 TransformerEncoderLayers (the chain) -> head (suffix)."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.stem = nn.Linear(6, d)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.encoder(self.stem(x)).mean(1))


class Tangled(nn.Module):
    """No chain: a skip connection around the list of layers."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])

    def forward(self, x):
        return self.layers[1](self.layers[0](x)) + self.layers[0](x)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(24, 32), nn.ReLU(inplace=True), nn.Linear(32, 32), nn.Tanh(),
        nn.Linear(32, 5),
    )  # fmt: skip


def _ctx(model, data, **kw):
    targets = {
        n: (m, "weight")
        for n, m in ((n[: -len(".weight")], None) for n, _ in model.named_parameters())
        if False
    }
    targets = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.MultiheadAttention)):
            tensor = "in_proj_weight" if isinstance(module, nn.MultiheadAttention) else "weight"
            targets[f"{name}.{tensor}"] = (module, tensor)
    return SaliencyContext(model, targets, data, batch_size=7, **kw)


def _data(shape, n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Dataset(torch.randn(n, *shape, generator=g), torch.zeros(n, dtype=torch.long))


def _both(model, data, method, **kw):
    ctx = _ctx(model, data)
    block = make_criterion("layerwise-obs", method=method, calibration="blockwise", **kw)
    whole = make_criterion("layerwise-obs", method=method, calibration="whole", **kw)
    kb, wb = block.solve(ctx, 0.5)
    kw_, ww = whole.solve(ctx, 0.5)
    assert block.calibrated_ == "blockwise" and whole.calibrated_ == "whole"
    return kb, wb, kw_, ww


@pytest.mark.parametrize("method", ["obc", "sparsegpt"])
def test_mlp_blockwise_equals_whole_model(method):
    model, data = _mlp(), _data((4, 6))
    before = copy.deepcopy(model.state_dict())
    kb, wb, kw_, ww = _both(model, data, method, block_size=8)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for name in kb:
        assert torch.equal(kb[name], kw_[name]), name
        torch.testing.assert_close(wb[name], ww[name], rtol=1e-6, atol=1e-7)
        assert not kb[name].all()


def test_encoder_prefix_chain_suffix_equals_whole_model():
    torch.manual_seed(0)
    model, data = Encoder(), _data((5, 6))
    chain = plan(model, [], data, "cpu")
    assert chain.paths == ["encoder.layers.0", "encoder.layers.1"]
    kb, wb, kw_, ww = _both(model, data, "sparsegpt", block_size=8)
    assert "stem.weight" in kb and "head.weight" in kb
    assert "encoder.layers.1.self_attn.out_proj.weight" in kb
    for name in kb:
        assert torch.equal(kb[name], kw_[name]), name
        torch.testing.assert_close(wb[name], ww[name], rtol=1e-5, atol=1e-6)


def test_masks_already_present_are_kept():
    model, data = _mlp(), _data((4, 6))
    keep0 = torch.rand(32, 24, generator=torch.Generator().manual_seed(3)) > 0.3
    set_mask(model[1], "weight", keep0)
    ctx = _ctx(model, data, masks={"1.weight": keep0})
    kb, wb = make_criterion("layerwise-obs", calibration="blockwise").solve(ctx, 0.6)
    kw_, ww = make_criterion("layerwise-obs", calibration="whole").solve(ctx, 0.6)
    assert not (kb["1.weight"] & ~keep0).any()
    for name in kb:
        assert torch.equal(kb[name], kw_[name])
        torch.testing.assert_close(wb[name], ww[name], rtol=1e-6, atol=1e-7)


def test_no_chain_falls_back_with_a_note():
    model, data = Tangled(), _data((8,))
    assert find_chain(model) is not None  # a candidate, refused by the probe
    reason = plan(model, [], data, "cpu")
    assert isinstance(reason, str) and "block" in reason
    with pytest.warns(UserWarning, match="calibrating on the whole model"):
        crit = make_criterion("layerwise-obs")
        crit.solve(_ctx(model, data), 0.5)
    assert crit.calibrated_.startswith("whole (")
    with pytest.raises(ConfigError, match="calibration='blockwise'"):
        make_criterion("layerwise-obs", calibration="blockwise").solve(_ctx(model, data), 0.5)
    with pytest.raises(ConfigError, match="calibration must be one of"):
        make_criterion("layerwise-obs", calibration="layer")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_criterion("layerwise-obs").solve(_ctx(_mlp(), _data((4, 6))), 0.5)  # no note


class Twin(nn.Module):
    """Two layers on the very same input (one statistics pass), then one on their sum."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.c(torch.relu(self.a(x) + self.b(x)))


def test_layers_on_one_input_share_a_pass_and_equal_whole():
    torch.manual_seed(0)
    model, data = nn.Sequential(Twin(), Twin()), _data((8,))
    kb, wb, kw_, ww = _both(model, data, "sparsegpt")
    for name in kb:
        assert torch.equal(kb[name], kw_[name]), name
        torch.testing.assert_close(wb[name], ww[name], rtol=1e-6, atol=1e-7)
    model[0].calls = 0
    make_criterion("layerwise-obs", calibration="blockwise").solve(_ctx(model, data), 0.5)
    assert model[0].calls == 1  # the probe; the passes ran on a copy of the block


def _quantized(model, data, **kw):
    from brainsurgeon.quantization import quantize
    from brainsurgeon.quantization.methods.gptq import GPTQConfig

    m = copy.deepcopy(model)
    result = quantize(m, GPTQConfig(bits=3, samples=len(data), **kw), data, device="cpu")
    return {k: v.detach() for k, v in m.state_dict().items()}, result.notes


@pytest.mark.parametrize("which", ["mlp", "encoder"])
def test_gptq_blockwise_equals_whole_model(which):
    torch.manual_seed(0)
    model, data = (_mlp(), _data((4, 6))) if which == "mlp" else (Encoder(), _data((5, 6)))
    qb, nb = _quantized(model, data, calibration="blockwise")
    qw, nw = _quantized(model, data, calibration="whole")
    q1, n1 = _quantized(model, data, sequential=False)
    assert nb["calibration"] == "blockwise" and nw["calibration"].startswith("whole")
    assert n1["calibration"] == "one pass"
    assert qb.keys() == qw.keys()
    for k in qb:
        torch.testing.assert_close(qb[k], qw[k], rtol=1e-6, atol=1e-6)
    assert any(not torch.equal(qb[k], q1[k]) for k in qb)  # sequential changes the result


# ------------------------------------------------------------------ --max-memory


def test_parse_bytes_and_chunk():
    from brainsurgeon import memory

    assert memory.parse_bytes("2GB") == 2 * 10**9
    assert memory.parse_bytes("512MiB") == 512 * 2**20
    assert memory.parse_bytes(" 1.5 kb ") == 1500 and memory.parse_bytes(4096) == 4096
    assert memory.parse_bytes(None) is None
    for bad in ("2 parsecs", "-1GB", "0", True, "GB"):
        with pytest.raises(ConfigError, match="max_memory must be"):
            memory.parse_bytes(bad)
    assert memory.chunk(100, 256, what="x") == 256  # no budget
    with memory.budget("10KB"):
        assert memory.chunk(100, 256, what="x") == 100
        assert memory.chunk(100, 256, what="x", fixed=9_000) == 10
        with memory.budget(None):  # keeps the outer budget
            assert memory.current() == 10_000
        with pytest.raises(ConfigError, match=r"too small for x: one sample needs 20,000 bytes"):
            memory.chunk(20_000, 256, what="x")
    assert memory.current() is None


def test_obd_sd_chunks_follow_the_budget_and_results_do_not_change():
    from brainsurgeon import memory
    from brainsurgeon.curvature import DamageStats, collect

    model, data = _mlp(), _data((4, 6))
    targets = {n: v for n, v in _ctx(model, data).targets.items()}
    P = sum(getattr(m, t).numel() for m, t in targets.values())
    ref = collect(DamageStats(model, targets, _loss), model, data, batch_size=40)
    acc = DamageStats(model, targets, _loss)
    with memory.budget(16 * P + 24 * P * 3):  # 3 samples a chunk
        assert acc.chunk_for(P) == 3
        collect(acc, model, data, batch_size=40)
    for n in targets:
        torch.testing.assert_close(acc.sd()[n], ref.sd()[n], rtol=1e-5, atol=1e-8)  # fp32 grads
    with memory.budget(16 * P + 10), pytest.raises(ConfigError, match="too small for per-sample"):
        collect(DamageStats(model, targets, _loss), model, data, batch_size=40)


def _loss(z, y):
    return nn.functional.cross_entropy(z, y)


def test_blockwise_batch_follows_the_budget():
    from brainsurgeon import memory
    from brainsurgeon.curvature.blockwise import Step, batch_for

    model, data = _mlp(), _data((4, 6))
    ctx = _ctx(model, data)
    steps = [Step(n, *ctx.targets[n]) for n in ctx.targets]
    chain = plan(model, steps, data, "cpu")
    assert chain.boundary_bytes == 32 * 4 and chain.input_bytes["1.weight"] == 24 * 4
    fixed = 40 * 128 + 8 * 32**2  # the stored boundary + the largest block's X^T X
    per = 2 * 128 + 32 * 4
    with memory.budget(fixed + 5 * per):
        assert batch_for(chain, steps, 40, 7, "x") == 5
        kb, wb = make_criterion("layerwise-obs", calibration="blockwise").solve(ctx, 0.5)
    kr, wr = make_criterion("layerwise-obs", calibration="blockwise").solve(ctx, 0.5)
    for n in kb:
        assert torch.equal(kb[n], kr[n])
        torch.testing.assert_close(wb[n], wr[n], rtol=1e-5, atol=1e-6)
    with memory.budget(fixed), pytest.raises(ConfigError, match="too small for layerwise-obs"):
        make_criterion("layerwise-obs").solve(ctx, 0.5)


def test_cli_max_memory_is_recorded_and_checked(tmp_path, trained_run):
    import json

    from brainsurgeon.cli.main import main

    out = tmp_path / "p"
    args = ["prune", str(trained_run), "--out", str(out), "--quiet", "--criterion", "obd-sd"]
    assert main([*args, "--samples", "64", "--max-memory", "64MiB"]) == 0
    assert json.loads((out / "config.json").read_text())
    text = (out / "config.json").read_text()
    assert '"max_memory": "64MiB"' in text
    assert main([*args, "--force", "--max-memory", "1KB"]) == 2
    assert main([*args, "--force", "--max-memory", "lots"]) == 2
    q = tmp_path / "q"
    qargs = ["quantize", str(trained_run), "--out", str(q), "--method", "gptq", "--quiet"]
    assert main([*qargs, "--samples", "64", "--max-memory", "1GB"]) == 0
    text = (q / "config.json").read_text()
    assert '"max_memory": "1GB"' in text and '"calibration": "blockwise"' in text


# ------------------------------------------------------------------ HF layers, devices


def _bert():
    transformers = pytest.importorskip("transformers", reason="the HF test needs transformers")
    from brainsurgeon.models.hf import HFEncoder

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = HFEncoder(transformers.BertModel(cfg, add_pooling_layer=False)).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (21, 10), generator=g)
    mask = (torch.arange(10)[None] < torch.randint(3, 9, (21,), generator=g)[:, None]).long()
    return model, Dataset(torch.stack([ids * mask, mask], 1), torch.zeros(21, dtype=torch.long))


def test_hf_encoder_layers_with_masks_equal_whole_model():
    model, data = _bert()
    chain = plan(model, [], data, "cpu")
    assert chain.paths == ["backbone.encoder.layer.0", "backbone.encoder.layer.1"]
    kb, wb, kw_, ww = _both(model, data, "sparsegpt", block_size=8)
    assert "backbone.encoder.layer.1.attention.self.value.weight" in kb
    for name in kb:
        assert torch.equal(kb[name], kw_[name]), name
        torch.testing.assert_close(wb[name], ww[name], rtol=1e-5, atol=1e-6)


def test_offload_keeps_the_result():
    model, data = _mlp(), _data((4, 6))
    ctx = _ctx(model, data)
    ko, wo = make_criterion("layerwise-obs", offload=True).solve(ctx, 0.5)
    kr, wr = make_criterion("layerwise-obs").solve(ctx, 0.5)
    assert all(torch.equal(ko[n], kr[n]) and torch.equal(wo[n], wr[n]) for n in ko)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_blockwise_with_offload_matches_cpu():
    model, data = _mlp(), _data((4, 6))
    kr, wr = make_criterion("layerwise-obs").solve(_ctx(model, data), 0.5)
    for offload in (False, True):  # the model stays on the CPU; the blocks run on the GPU
        ctx = _ctx(model, data, device=torch.device("cuda"))
        kc, wc = make_criterion("layerwise-obs", offload=offload).solve(ctx, 0.5)
        for n in kr:
            assert (kc[n].cpu() == kr[n]).float().mean() > 0.99
            torch.testing.assert_close(wc[n].cpu(), wr[n], rtol=1e-3, atol=1e-4)
