"""Whole blocks removed: residual blocks and transformer layers, by measured damage, with the
removal replayed by brainsurgeon.load."""

from __future__ import annotations

import copy

import pytest
import torch

import brainsurgeon as bs
from brainsurgeon.data.core import Dataset
from brainsurgeon.errors import ConfigError
from brainsurgeon.structured import block_damage, drop_blocks, find_blocks
from brainsurgeon.structured.blocks import _without
from conftest import run_cli
from structured_models import built


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("pattern", ["resnet8", "stack"])
def test_dropping_a_block_equals_skipping_it_and_reloads(pattern, tmp_path):
    model, x = built(pattern)
    blocks = find_blocks(model)
    assert blocks, "no removable block found"
    victim = blocks[-1]
    handle = _without(model, victim)
    expected = _out(model, x)
    handle.remove()
    small = copy.deepcopy(model)
    drop_blocks(small, [victim.name])
    assert torch.allclose(_out(small, x), expected, atol=1e-6)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    bs.save(small, tmp_path / "run")
    assert torch.allclose(_out(bs.load(tmp_path / "run"), x), expected, atol=1e-6)


def test_damage_is_the_measured_loss_increase():
    model, x = built("stack")
    y = torch.randint(0, 10, (x.shape[0],))
    data = Dataset(x, y)
    damage = block_damage(model, data, samples=x.shape[0])
    base = torch.nn.functional.cross_entropy(_out(model, x), y)
    for b in find_blocks(model):
        handle = _without(model, b)
        loss = torch.nn.functional.cross_entropy(_out(model, x), y)
        handle.remove()
        assert damage[b.name] == pytest.approx(float(loss - base), abs=1e-5)


def test_bad_block_requests_are_refused():
    model, _ = built("stack")
    with pytest.raises(ConfigError, match="removable blocks are"):
        drop_blocks(model, ["fc"])
    layers = [b.name for b in find_blocks(model)]
    with pytest.raises(ConfigError, match="keep at least one"):
        drop_blocks(model, layers)


def test_cli_drop_removes_the_least_damaging_blocks(tmp_path, digits):
    torch.manual_seed(0)
    model = bs.build_model("resnet8", digits.input_shape, digits.num_classes)
    bs.fit(model, digits, bs.TrainConfig(epochs=1), progress=False)
    run = bs.save(model, tmp_path / "r", config={"data": digits.spec})
    proc = run_cli("drop", str(run), "--blocks", "1", "--out", str(tmp_path / "d"), check=True)
    damage = block_damage(model, digits)
    assert min(damage, key=damage.get) in proc.stdout
    small = bs.load(tmp_path / "d")
    assert len(find_blocks(small)) == 2
