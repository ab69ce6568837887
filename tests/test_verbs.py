"""One convention for every verb: loss=, device=, progress= and callback= named the same."""

from __future__ import annotations

import inspect

import pytest

import brainsurgeon as bs


@pytest.mark.parametrize("verb", ["prune", "quantize", "factorize", "distill", "fit"])
def test_every_long_verb_takes_the_same_keywords(verb):
    params = inspect.signature(getattr(bs, verb)).parameters
    for name in ("loss", "device", "progress", "callback"):
        assert name in params, f"{verb} has no {name}="
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, (verb, name)


def test_factorize_and_distill_call_back(digits):
    from brainsurgeon.distillation import DistillConfig
    from brainsurgeon.factorization import FactorizeConfig

    model = bs.build_model("mlp:64-32-10", digits.input_shape, digits.num_classes)
    seen = []
    bs.factorize(model, FactorizeConfig(rank=4), callback=seen.append)
    assert [r["rank"] for r in seen] == [4, 4] and seen[0]["layer"] == "fc1"
    teacher = bs.build_model("mlp:64-32-10", digits.input_shape, digits.num_classes)
    student = bs.build_model("mlp:64-16-10", digits.input_shape, digits.num_classes)
    epochs = []
    bs.distill(
        teacher, student, DistillConfig(epochs=2), digits, progress=False, callback=epochs.append
    )
    assert [e["epoch"] for e in epochs] == [1, 2]
