"""shrink: physical removal, its parameter count, save/load replay, ONNX, dead units."""

from __future__ import annotations

import copy

import pytest
import torch

import brainsurgeon as bs
from brainsurgeon.errors import ConfigError
from brainsurgeon.pruning.masks import masks_of, set_mask
from brainsurgeon.state import edits_of
from brainsurgeon.structured import apply_unit_mask, find_dead_units, find_groups, shrink
from structured_models import PATTERNS, built, by_name, random_keeps


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_mlp_loses_exactly_the_removed_rows_and_columns():
    model, x = built("mlp")  # 64-32-16-10
    groups = by_name(find_groups(model, x))
    keep1, keep2 = torch.arange(32) < 20, torch.arange(16) < 9  # remove 12 and 7
    before = n_params(model)
    shrink(model, {groups["fc1"]: keep1, groups["fc2"]: keep2})
    assert before - n_params(model) == 12 * (64 + 1) + (32 * 16 - 20 * 9) + 7 * 1 + 7 * 10
    assert (model.fc1.out_features, model.fc2.in_features, model.fc2.out_features) == (20, 20, 9)
    assert [e["kind"] for e in edits_of(model)] == ["shrink"]


@pytest.mark.parametrize("pattern", ["mlp", "lenet5", "resnet8", "concat", "attention", "stack"])
def test_save_and_load_replay_the_surgery(pattern, tmp_path):
    model, x = built(pattern)
    shrink(model, random_keeps(find_groups(model, x), seed=2))
    shrink(model, random_keeps(find_groups(model, x), seed=3))  # a second edit on top
    loaded = bs.load(bs.save(model, tmp_path / "run", config={}))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=1e-6)
    assert n_params(loaded) == n_params(model)


def test_masks_shrink_with_their_tensors_and_survive_save_load(tmp_path):
    model, x = built("mlp")
    set_mask(model.fc2, "weight", torch.rand(16, 32) > 0.3)  # unstructured mask on fc2
    groups = by_name(find_groups(model, x))
    apply_unit_mask(model, groups["fc2"], torch.arange(16) % 2 == 0)
    shrink(model, {groups["fc1"]: torch.arange(32) < 25})
    assert masks_of(model)["fc2.weight"].shape == (16, 25)
    loaded = bs.load(bs.save(model, tmp_path / "run", config={}))
    assert torch.equal(masks_of(loaded)["fc2.weight"], masks_of(model)["fc2.weight"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_masked_heads_stay_masked_through_surgery_and_save_load(tmp_path):
    model, x = built("attention")
    (heads,) = find_groups(model, x)
    apply_unit_mask(model, heads, torch.tensor([True, True, False, True]))
    with torch.no_grad():
        before = model(x)
    shrink(model, {heads: torch.tensor([True, False, True, True])})
    assert model.attn.num_heads == 3 and masks_of(model)["attn.in_proj_weight"].shape == (18, 8)
    loaded = bs.load(bs.save(model, tmp_path / "run", config={}))
    with torch.no_grad():
        assert not torch.allclose(model(x), before)
        torch.testing.assert_close(loaded(x), model(x))
    assert not masks_of(loaded)["attn.in_proj_weight"][2:4].any()  # old head 2 is head 1


def test_resnet8_masked_equals_shrunk_in_training_mode_too():
    model, x = built("resnet8")
    keeps = random_keeps(find_groups(model, x), seed=4)
    masked = copy.deepcopy(model).train()
    for g, keep in keeps.items():
        apply_unit_mask(masked, g, keep)
    shrunk = shrink(copy.deepcopy(model), keeps).train()
    torch.testing.assert_close(shrunk(x), masked(x), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_shrunk_resnet8_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, x = built("resnet8")
    shrink(model, random_keeps(find_groups(model, x), seed=5))
    path = str(tmp_path / "resnet8.onnx")
    torch.onnx.export(model, (x,), path, input_names=["x"], dynamo=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-5, rtol=1e-5)


def test_dead_units_are_found_and_removed():
    model, x = built("conv_flatten")
    groups = by_name(find_groups(model, x))
    with torch.no_grad():
        for t in (model.fc1.weight, model.fc1.bias):
            t[[1, 4]] = 0.0
        model.fc1.weight[2, :3] = 0.0  # partly zero: alive
    dead = find_dead_units(model, groups.values())
    assert dead["fc1"].nonzero().flatten().tolist() == [1, 4]
    assert not dead["conv1"].any()
    with torch.no_grad():
        before = model(x)
        shrink(model, {groups["fc1"]: ~dead["fc1"]})
        torch.testing.assert_close(model(x), before)
    assert model.fc1.out_features == 5


def test_stale_groups_are_refused():
    model, x = built("mlp")
    fc1 = by_name(find_groups(model, x))["fc1"]
    shrink(model, {fc1: torch.arange(32) < 10})
    with pytest.raises(ConfigError, match="recompute the groups with find_groups"):
        shrink(model, {fc1: torch.arange(32) < 20})


def test_patterns_table_is_covered():
    assert {"mlp", "resnet8", "attention"} <= set(PATTERNS)
