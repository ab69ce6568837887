"""Masks: zeros stay zero under every optimizer; state_dict, deepcopy, save/load, make_permanent."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from brainsurgeon import runs
from brainsurgeon.errors import ConfigError
from brainsurgeon.models import build_model
from brainsurgeon.pruning import make_permanent, masks_of, set_mask
from brainsurgeon.state import make_permanent as make_all_permanent


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets run fastest on one thread (and do not spin against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _masked_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("mlp:64-16-10", (1, 8, 8), 10)
    for name in ("fc1", "fc2"):
        layer = model.get_submodule(name)
        set_mask(layer, "weight", torch.rand(layer.weight.shape) > 0.6)
    return model


OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_zero_through_100_steps(opt_name):
    model = _masked_model()
    masks = {k: v.clone() for k, v in masks_of(model).items()}
    opt = OPTIMIZERS[opt_name](model.parameters())
    g = torch.Generator().manual_seed(0)
    before = model.fc1.weight.detach().clone()
    for _ in range(100):
        x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, keep in masks.items():
        weight = model.get_submodule(name.removesuffix(".weight")).weight
        assert torch.all(weight[~keep] == 0), name
        assert torch.equal(masks_of(model)[name], keep)
    # the kept weights did train
    assert not torch.allclose(model.fc1.weight[masks["fc1.weight"]], before[masks["fc1.weight"]])


def test_masks_only_shrink_and_zero_the_original():
    model = _masked_model()
    first = masks_of(model)["fc1.weight"].clone()
    set_mask(model.fc1, "weight", torch.ones_like(first))
    assert torch.equal(masks_of(model)["fc1.weight"], first)
    from brainsurgeon.state import original

    assert torch.all(original(model.fc1, "weight")[~first] == 0)


def test_mask_shape_mismatch_is_a_clear_error():
    model = _masked_model()
    with pytest.raises(ConfigError, match=r"mask shape \(3, 3\) does not match weight shape"):
        set_mask(model.fc1, "weight", torch.ones(3, 3, dtype=torch.bool))


def test_state_dict_and_deepcopy_keep_masks():
    model = _masked_model()
    copied = copy.deepcopy(model)
    assert torch.equal(masks_of(copied)["fc1.weight"], masks_of(model)["fc1.weight"])
    copied.fc1.parametrizations.weight[0].mask.fill_(False)  # independent buffers
    assert masks_of(model)["fc1.weight"].any()
    fresh = _masked_model(seed=1)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(masks_of(fresh)["fc2.weight"], masks_of(model)["fc2.weight"])
    assert torch.equal(fresh.fc2.weight, model.fc2.weight)


def test_save_and_load_run_restore_masks(tmp_path):
    model = _masked_model()
    runs.save(model, tmp_path / "run", config={"history": []})
    loaded = runs.load_run(tmp_path / "run").model
    assert set(masks_of(loaded)) == {"fc1.weight", "fc2.weight"}
    for name, keep in masks_of(model).items():
        assert torch.equal(masks_of(loaded)[name], keep)
    x = torch.randn(5, 1, 8, 8)
    model.eval()
    assert torch.allclose(loaded(x), model(x))


def test_make_permanent_bakes_masks_and_leaves_copies_intact():
    model = _masked_model()
    copied = copy.deepcopy(model)
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)
    make_permanent(copied)
    assert masks_of(copied) == {}
    assert set(copied.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert torch.allclose(copied(x), expected)
    # deepcopy shares torch's parametrized class: the original must still work
    assert torch.allclose(model(x), expected)
    assert set(masks_of(model)) == {"fc1.weight", "fc2.weight"}
    make_all_permanent(model)
    assert torch.allclose(model(x), expected)


def test_functional_call_on_a_masked_model_keeps_the_mask_and_the_original():
    from torch.func import functional_call

    model = _masked_model()
    keep = masks_of(model)["fc1.weight"]
    original = model.fc1.parametrizations.weight.original
    before = original.detach().clone()
    x = torch.randn(3, 1, 8, 8)
    ones = torch.ones_like(model.fc1.weight)
    out = functional_call(model, {"fc1.weight": ones}, (x,))
    expected = model.fc2(
        torch.relu(nn.functional.linear(x.flatten(1), keep.float(), model.fc1.bias))
    )
    assert torch.allclose(out, expected, atol=1e-6)
    assert model.fc1.parametrizations.weight.original is original
    assert torch.equal(original, before)
