"""Hugging Face adapter on a tiny randomly initialised BERT (no download): wrapping, save/load,
heads and FFN neurons found and shrunk exactly, every criterion and quantizer runs, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers", reason="Hugging Face tests need transformers")

from brainsurgeon import runs  # noqa: E402
from brainsurgeon.errors import ConfigError  # noqa: E402
from brainsurgeon.models.hf import HFEncoder, load_pretrained  # noqa: E402

VOCAB, HIDDEN, HEADS, LAYERS, INTER, LENGTH = 50, 32, 4, 2, 48, 12


def _bert_dir(tmp_path, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=INTER, max_position_embeddings=32,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides,
    )  # fmt: skip
    model = transformers.BertModel(cfg, add_pooling_layer=False)
    folder = tmp_path / f"bert{seed}"
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model.eval()


def _tokens(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(3, LENGTH - 2, (n,), generator=g)  # padding never used at the end
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    return torch.stack([ids * mask, mask], 1)


@pytest.fixture
def bert(tmp_path):
    folder, raw = _bert_dir(tmp_path)
    return load_pretrained(folder, max_length=LENGTH), raw, folder


def test_mean_pooled_normalised_embedding_matches_transformers(bert):
    model, raw, _ = bert
    x = _tokens()
    with torch.no_grad():
        h = raw(input_ids=x[:, 0], attention_mask=x[:, 1]).last_hidden_state
        m = x[:, 1].unsqueeze(-1).float()
        oracle = F.normalize((h * m).sum(1) / m.sum(1), dim=-1)
        out = model(x)
        as_dict = model({"input_ids": x[:, 0], "attention_mask": x[:, 1]})
    assert out.shape == (16, HIDDEN)
    torch.testing.assert_close(out, oracle, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(as_dict, out)
    model.trim = False  # trimming the unused padding columns is exact
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)


def test_save_load_identical_outputs_and_transformers_layout(bert, tmp_path):
    model, _, _ = bert
    x = _tokens()
    path = runs.save(model, tmp_path / "run", config={"loss": "cosine"})
    loaded = runs.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    cfg = json.loads((path / "hf" / "config.json").read_text())
    assert cfg["hidden_size"] == HIDDEN and cfg["num_attention_heads"] == HEADS


def _data(model, n=48):
    from brainsurgeon.data.embeddings import embedding_bundle, teacher_embeddings

    x = _tokens(n, seed=1)
    y = teacher_embeddings(model, x)
    return embedding_bundle(x, y, calib=24, val=8, test=16, seed=0)


def test_embedding_evaluation_of_the_original_is_perfect(bert):
    from brainsurgeon.training import evaluate

    model, _, _ = bert
    result = evaluate(model, _data(model), loss="cosine")
    assert result["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert result["top10"] == pytest.approx(1.0)


def test_heads_and_ffn_neurons_shrink_exactly(bert, tmp_path):
    from brainsurgeon.structured import find_groups, shrink
    from brainsurgeon.structured.masks import apply_unit_mask

    model, _, _ = bert
    x = _tokens()
    groups = find_groups(model, x)
    kinds = sorted((g.kind, g.units) for g in groups)
    assert kinds == [("head", HEADS)] * LAYERS + [("neuron", INTER)] * LAYERS
    keeps = {}
    for i, g in enumerate(groups):
        keep = torch.ones(g.units, dtype=torch.bool)
        keep[
            torch.randperm(g.units, generator=torch.Generator().manual_seed(i))[: g.units // 2]
        ] = 0
        keeps[g] = keep
        apply_unit_mask(model, g, keep)
    with torch.no_grad():
        masked = model(x)
    shrink(model, keeps)
    sa = model.backbone.encoder.layer[0].attention.self
    assert sa.query.out_features == HIDDEN // 2
    assert model.backbone.encoder.layer[0].intermediate.dense.out_features == INTER // 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-4)
    path = runs.save(model, tmp_path / "shrunk")
    with torch.no_grad():
        torch.testing.assert_close(runs.load(path)(x), masked, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "criterion, options",
    [
        ("magnitude", {}),
        ("taylor1", {}),
        ("obd", {}),
        ("obd-sd", {}),
        ("layerwise-obs", {"method": "sparsegpt"}),
        ("random", {}),
        ("obs", {}),
        ("true-damage", {}),
        ("dropout-regression", {}),
    ],
)
def test_every_criterion_prunes_the_encoder(bert, criterion, options):
    from brainsurgeon import PruneConfig, prune

    model, _, _ = bert
    data = _data(model)
    cfg = PruneConfig(
        criterion=criterion, criterion_options=options, amount=0.5, scheme="per-layer",
        exclude=("backbone.embeddings.*",), samples=16,
    )  # fmt: skip
    result = prune(model, cfg, data, loss="cosine", progress=False)
    w = model.backbone.encoder.layer[1].output.dense.weight
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.02
    assert result is not None


QUANT_OPTIONS = {
    "uniform": {"bits": 4},
    "kmeans": {"bits": 4},
    "gptq": {"bits": 4, "group_size": 16},
    "binary": {},
    "ternary": {},
    "product": {"bits": 4, "exclude": ("backbone.embeddings.*",)},
    "residual": {"bits": 4, "exclude": ("backbone.embeddings.*",)},
}


@pytest.mark.parametrize("method", sorted(QUANT_OPTIONS))
def test_quantizers_run_and_round_trip(bert, tmp_path, method):
    from brainsurgeon import quantize
    from brainsurgeon.quantization import quant_config

    model, _, _ = bert
    data = _data(model)
    quantize(model, quant_config(method, **QUANT_OPTIONS[method]), data, loss="cosine")
    x = _tokens()
    path = runs.save(model, tmp_path / method)
    with torch.no_grad():
        assert torch.equal(runs.load(path)(x), model(x))


def test_gpt2_conv1d_has_a_transposed_layout():
    from brainsurgeon.curvature.layer_inputs import weight_matrix
    from brainsurgeon.models.adapters import layout_of
    from brainsurgeon.models.hf import transformers_module

    transformers_module()
    layer = transformers.pytorch_utils.Conv1D(6, 4)  # (in 4, out 6) stored as (4, 6)
    assert layout_of(layer, "weight").out_axis == 1
    assert weight_matrix(layer, "weight", layer.weight).shape == (6, 4)


def test_bad_model_folders_are_refused_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        load_pretrained(empty)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_pretrained(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="no model.safetensors"):
        load_pretrained(empty)
    (empty / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="pickled"):
        load_pretrained(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    (empty / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="no Hugging Face adapter"):
        load_pretrained(empty)


def test_weights_of_another_model_are_refused(tmp_path):
    folder, _ = _bert_dir(tmp_path)
    other = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8,
    )  # fmt: skip
    (folder / "config.json").write_text(other.to_json_string())
    with pytest.raises(ConfigError, match="another model"):
        load_pretrained(folder)


def test_wrong_input_layout_is_refused(bert):
    model, _, _ = bert
    with pytest.raises(ConfigError, match=r"\(N, 2, L\)"):
        model(torch.zeros(3, LENGTH, dtype=torch.long))
    assert isinstance(model, HFEncoder)


def test_a_pruned_model_saves_as_a_transformers_folder(bert, tmp_path):
    from brainsurgeon import PruneConfig, prune
    from brainsurgeon.models.hf_layout import save_pretrained

    model, _, _ = bert
    prune(model, PruneConfig(amount=0.5, exclude=("backbone.embeddings.*",)), progress=False)
    folder = save_pretrained(model, tmp_path / "hf")
    back = transformers.AutoModel.from_pretrained(folder).eval()
    x = _tokens()
    with torch.no_grad():
        h = back(input_ids=x[:, 0], attention_mask=x[:, 1]).last_hidden_state
        m = x[:, 1].unsqueeze(-1).float()
        torch.testing.assert_close(
            F.normalize((h * m).sum(1) / m.sum(1), dim=-1), model(x), atol=1e-5, rtol=1e-5
        )
    w = back.encoder.layer[0].output.dense.weight
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.05


def test_a_shrunk_model_is_not_a_transformers_folder(bert, tmp_path):
    from brainsurgeon.models.hf_layout import save_pretrained
    from brainsurgeon.structured import find_groups, shrink

    model, _, _ = bert
    g = find_groups(model, _tokens(), "head")[0]
    keep = torch.ones(g.units, dtype=torch.bool)
    keep[0] = False
    shrink(model, {g: keep})
    with pytest.raises(ConfigError, match="cannot express"):
        save_pretrained(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_layer_input_statistics_leave_the_padding_out(bert):
    """Oracle: each sentence alone (no padding after trimming) summed; a padded batch must
    give the same ``X^T X`` and row count for every Linear, sequential or not."""
    from brainsurgeon.curvature.blockwise import Step, plan
    from brainsurgeon.curvature.layer_inputs import LayerInputStats
    from brainsurgeon.data.core import Dataset

    model = bert[0]
    x = _tokens(6, seed=3)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    batched = {n: LayerInputStats(m, n, torch.float64).attach() for n, m in linears.items()}
    with torch.no_grad():
        model(x)
    alone = {n: LayerInputStats(m, n, torch.float64).attach() for n, m in linears.items()}
    for st in batched.values():
        st.detach()
    with torch.no_grad():
        for i in range(len(x)):
            model(x[i : i + 1])
    for st in alone.values():
        st.detach()
    assert int(x[:, 1].sum()) < x[:, 1].numel()  # the batch is padded
    for n in linears:
        assert batched[n].count_ == alone[n].count_ == int(x[:, 1].sum()), n
        torch.testing.assert_close(batched[n].sum_, alone[n].sum_, rtol=1e-5, atol=1e-6)
    # block-by-block calibration replays the stored blocks with the same token mask
    from brainsurgeon.curvature.blockwise import Calibrator

    data = Dataset(x, torch.zeros(len(x), dtype=torch.long))
    name = "backbone.encoder.layer.1.intermediate.dense"
    steps = [Step(name + ".weight", linears[name], "weight")]
    seen = {}

    def solve(step, H):
        seen["H"] = H
        return getattr(step.module, step.tensor).detach().clone()

    chain = plan(model, steps, data, "cpu")
    Calibrator(model, chain, data, solve, batch_size=4).run(steps)
    expected = (2.0 * alone[name].sum_ / alone[name].count_).float()
    torch.testing.assert_close(seen["H"], expected, rtol=1e-5, atol=1e-6)


def test_unit_activation_statistics_leave_the_padding_out(bert):
    """FFN neurons' mean |a| and APoZ of a padded batch equal those of its sentences alone."""
    from brainsurgeon.structured import find_groups
    from brainsurgeon.structured.unit_stats import ActivationStats

    model, x = bert[0], _tokens(6, seed=4)
    groups = [g for g in find_groups(model, x) if g.kind == "neuron"]
    batched, alone = ActivationStats(groups[0]), ActivationStats(groups[0])
    batched.update(model, x)
    for i in range(len(x)):
        alone.update(model, x[i : i + 1])
    assert batched.count_ == alone.count_
    torch.testing.assert_close(batched.mean_abs(), alone.mean_abs(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(batched.apoz(), alone.apoz())
