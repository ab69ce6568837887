"""Every registered quantization method on every compressible tensor of a tiny transformer
(Embedding, MultiheadAttention in_proj_weight and out_proj, Linear) and a tiny LSTM classifier:
quantize, state_dict round trip, deepcopy, save/load, double quantization refused, bad options
refused before the model changes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from brainsurgeon.data.core import Dataset
from brainsurgeon.errors import ConfigError, UnsupportedLayerError
from brainsurgeon.models import build_model
from brainsurgeon.models.adapters import compressible
from brainsurgeon.quantization import QUANTIZERS, config_from_dict, quant_config, quantize, to_int8
from brainsurgeon.quantization.base import QuantParametrization
from brainsurgeon.runs import load_run, save
from brainsurgeon.state import describe, parametrizations_of, restore

# bits / widths that fit every tensor of both models (the heads have 3 rows)
OPTIONS = {
    "binary": {},
    "ternary": {},
    "uniform": {"bits": 4},
    "kmeans": {"bits": 2},
    "product": {"bits": 2, "block_width": 4, "per_layer_bits": {"head": 1}},
    "residual": {"bits": 2, "block_width": 2},
    "gptq": {"bits": 3, "samples": 32, "unhooked": "rtn"},
}
KINDS = {"transformer": (5,), "lstm": (6, 4)}


def _model(kind: str) -> tuple[torch.nn.Module, Dataset]:
    torch.manual_seed(0)
    model = build_model(f"quantization_models:{kind}", KINDS[kind], 3)
    g = torch.Generator().manual_seed(1)
    if kind == "transformer":
        x = torch.randint(0, 16, (48, *KINDS[kind]), generator=g)
    else:
        x = torch.randn(48, *KINDS[kind], generator=g)
    return model.eval(), Dataset(x, torch.randint(0, 3, (48,), generator=g))


def _out(model: torch.nn.Module, data: Dataset) -> torch.Tensor:
    with torch.no_grad():
        return model(data.x[:16])


def _quantize(model, config, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gptq says which tensors it rounded to nearest
        return quantize(model, config, data)


def _untouched(model: torch.nn.Module, **kw) -> bool:
    return not any(parametrizations_of(m, t) for m, t in compressible(model, **kw).values())


def test_every_registered_method_is_covered():
    assert sorted(OPTIONS) == QUANTIZERS.names()


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_contract(kind, method, tmp_path):
    model, data = _model(kind)
    m = copy.deepcopy(model)
    config = quant_config(method, **OPTIONS[method])
    result = _quantize(m, config, data)
    targets = compressible(m)
    assert set(result.bits) == set(targets)
    for name, (module, tensor) in targets.items():
        quant = [
            p for p in parametrizations_of(module, tensor) if isinstance(p, QuantParametrization)
        ]
        assert len(quant) == 1, name
    out = _out(m, data)
    assert not torch.allclose(out, _out(model, data))
    assert result.storage["total"]["bits_per_weight"] < 32
    if method == "gptq":  # every tensor's inputs are collected: none falls back to rounding
        assert "round_to_nearest" not in result.notes
    # state_dict round trip into a fresh model, deepcopy
    fresh, _ = _model(kind)
    restore(fresh, describe(m))
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(_out(fresh, data), out)
    assert torch.equal(_out(copy.deepcopy(m), data), out)
    # save / load through a run directory
    save(m, tmp_path / "run", config={"compression": {"quantization": result.summary()}})
    run = load_run(tmp_path / "run")
    assert torch.equal(_out(run.model, data), out)
    assert config_from_dict(run.config["compression"]["quantization"]["config"]) == config
    # quantizing twice is refused and changes nothing
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="already quantized"):
        _quantize(m, config, data)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_bad_options_are_refused_with_the_valid_ones(method):
    model, data = _model("transformer")
    with pytest.raises(ConfigError, match=rf"{method} has no option\(s\) nonsense; its options: "):
        quant_config(method, nonsense=1)
    with pytest.raises(ConfigError, match=rf"{method} needs bits .*got 99"):
        quant_config(method, bits=99)
    config = quant_config(method, **{**OPTIONS[method], "exclude": ("nope",)})
    with pytest.raises(ConfigError, match="exclude pattern 'nope' matches no compressible layer"):
        quantize(model, config, data)
    assert _untouched(model)


class _TwoLayerLSTM(nn.Module):
    """Layer-input statistics of ``weight_hh_l1`` need layer 0's outputs: not collected."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, num_layers=2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_gptq_refuses_tensors_whose_inputs_it_cannot_collect_before_changing_anything():
    _, data = _model("lstm")
    torch.manual_seed(0)
    model = _TwoLayerLSTM()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(
        UnsupportedLayerError, match=r"gptq cannot quantize rnn \(LSTM\).*single-layer"
    ):
        quantize(model, quant_config("gptq", samples=32), data)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(parametrizations_of(model.rnn, t) for t in ("weight_ih_l0", "weight_hh_l1"))


def test_gptq_rounds_what_it_cannot_collect_to_nearest_and_says_so():
    _, data = _model("lstm")
    torch.manual_seed(0)
    model = _TwoLayerLSTM()
    with pytest.warns(UserWarning, match="gptq rounded 4 tensor.*rnn.weight_ih_l0"):
        result = quantize(model, quant_config("gptq", samples=32, unhooked="rtn"), data)
    assert result.notes["round_to_nearest"] == [
        f"rnn.weight_{k}_l{i}" for i in (0, 1) for k in ("ih", "hh")
    ]
    assert result.summary()["round_to_nearest"] == result.notes["round_to_nearest"]


def test_gptq_on_out_proj_beats_rounding_where_hooks_cannot_see():
    """out_proj is run functionally by its attention; the recomputed context still gives GPTQ
    its error feedback: the attention block's measured outputs stay closer than rounding's."""
    model, data = _model("transformer")
    attn = model.encoder.layers[0].self_attn
    x = model.embed(data.x[:32]).detach()
    with torch.no_grad():
        ref = attn(x, x, x)[0]
    errors = {}
    for method, extra in (("gptq", {"samples": 48}), ("uniform", {})):
        m = copy.deepcopy(model)
        quantize(m, quant_config(method, bits=3, layers=("*.out_proj",), **extra), data)
        with torch.no_grad():
            out = m.encoder.layers[0].self_attn(x, x, x)[0]
        errors[method] = float((out - ref).pow(2).mean())
    assert errors["gptq"] < errors["uniform"]


def test_product_refuses_a_codebook_larger_than_a_tensor_naming_it():
    model, data = _model("lstm")
    with pytest.raises(ConfigError, match="k=4 centroids but head.weight has only 3 vectors"):
        quantize(model, quant_config("product", bits=2), data)
    assert _untouched(model)


def test_int8_execution_names_the_tensors_left_in_float():
    model, data = _model("transformer")
    with pytest.warns(
        UserWarning, match="stay in float: embed.weight, .*in_proj_weight.*linear1.weight"
    ):
        q = to_int8(model)
    with torch.no_grad():
        assert torch.allclose(q(data.x[:8]), model(data.x[:8]), atol=0.1)
    assert "DynamicQuantizedLinear" in str(q.head) and "DynamicQuantized" not in str(q.encoder)


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_include_bias_quantizes_biases_or_refuses_naming_them(method):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    data = Dataset(torch.randn(32, 8), torch.randint(0, 8, (32,)))
    targets = compressible(model, include_bias=True)
    assert "0.bias" in targets
    options = {k: v for k, v in OPTIONS[method].items() if k != "per_layer_bits"}  # no head
    config = quant_config(method, **options, include_bias=True)
    if method in ("product", "residual"):  # a bias has one input column: no sub-vectors
        with pytest.raises(ConfigError, match="does not divide the 1 input columns of 0.bias"):
            _quantize(model, config, data)
        assert _untouched(model, include_bias=True)
        return
    result = _quantize(model, config, data)
    assert set(result.bits) == set(targets)
    bias = [p for p in parametrizations_of(model[0], "bias") if isinstance(p, QuantParametrization)]
    assert len(bias) == 1
    scales = [getattr(bias[0], n) for n in ("scale", "alpha") if hasattr(bias[0], n)]
    assert all(s.numel() == 1 for s in scales)  # one scale per bias vector, not per entry
