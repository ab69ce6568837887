"""Model builders: parameter counts, shapes adapting to the data, spec errors, user factories."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from brainsurgeon.errors import ConfigError
from brainsurgeon.models import build_model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_parameter_counts():
    assert n_params(build_model("lenet300", (1, 28, 28), 10)) == 266_610
    assert n_params(build_model("lenet5", (1, 28, 28), 10)) == 431_080


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "mlp:64-32-10,dropout=0.5"])
def test_models_adapt_to_digits(name):
    model = build_model(name, (1, 8, 8), 10)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_lenet300_layer_names():
    names = [n for n, _ in build_model("lenet300", (1, 8, 8), 10).named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]


def test_mlp_dropout_layers():
    model = build_model("mlp:64-20-20-10,dropout=0.25,input_dropout=0.1", (1, 8, 8), 10)
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.1, 0.25, 0.25]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mlp:784-300-10", "starts with 784 inputs but the data has 64"),
        ("mlp:64-300-7", "ends with 7 outputs but the data has 10 classes"),
        ("mlp:64-x-10", "cannot parse model spec"),
        ("mlp:64-10,width=3", "unknown mlp option 'width'"),
        ("resnet", "unknown model spec 'resnet'; valid: lenet300, lenet5"),
        ("nosuchpkg.mod:make", "cannot import 'nosuchpkg.mod'"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_model(spec, (1, 8, 8), 10)


def test_user_factory(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(
        textwrap.dedent("""
        import math, torch
        def make(input_shape, num_classes, width=8):
            return torch.nn.Sequential(torch.nn.Flatten(),
                torch.nn.Linear(math.prod(input_shape), width), torch.nn.ReLU(),
                torch.nn.Linear(width, num_classes))
        def not_a_module():
            return 3
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("usernets:make", (1, 8, 8), 10, {"width": 5})
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert model[1].out_features == 5
    with pytest.raises(ConfigError, match="returned int, expected a torch.nn.Module"):
        build_model("usernets:not_a_module", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="failed: .*unexpected keyword"):
        build_model("usernets:make", (1, 8, 8), 10, {"depth": 3})
    sys.modules.pop("usernets", None)
