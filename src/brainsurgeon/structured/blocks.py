"""Whole blocks and layers removed: residual blocks and transformer layers, scored by the
measured loss increase of dropping each one, cut out by a replayable edit.

Candidates (:func:`find_blocks`):

* every layer of an ``nn.TransformerEncoder`` / ``nn.TransformerDecoder`` (dropping it
  deletes it from ``layers``: the residual stream passes through unchanged);
* every residual block: a module with a ``shortcut`` or ``downsample`` child (the usual
  ResNet naming; ``resnet8``'s ``BasicBlock``): dropping it keeps only the shortcut, an
  identity or the 1x1 projection, so shapes stay as they were.

``block_damage`` measures, on calibration data, ``L(model without block b) - L(model)`` for
every candidate (one forward pass each); ``drop_blocks`` removes the chosen ones and records
``{"kind": "drop_blocks", "blocks": [...]}`` so ``brainsurgeon.load`` rebuilds the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.core import DataLike, as_dataset
from ..errors import ConfigError, RunDirError
from ..losses import LossLike, resolve_loss
from ..state import record_edit, register_edit
from ..utils import preserved_modes

SHORTCUTS = ("shortcut", "downsample")


@dataclass(frozen=True)
class Block:
    """A removable block: ``name`` (qualified), ``how`` it goes (``delete`` from a layer list,
    or ``shortcut``: replaced by its shortcut child, ``None`` meaning identity)."""

    name: str
    how: str
    shortcut: str | None = None


def find_blocks(model: nn.Module) -> list[Block]:
    """Every removable transformer layer and residual block of ``model``, in module order."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoder | nn.TransformerDecoder):
            out += [Block(f"{name}.layers.{i}" if name else f"layers.{i}", "delete")
                    for i in range(len(module.layers))]  # fmt: skip
            continue
        kids = dict(module.named_children())
        for attr in SHORTCUTS:
            if attr in kids or (hasattr(module, attr) and getattr(module, attr) is None):
                out.append(Block(name, "shortcut", attr))
                break
    return [b for b in out if b.name]


def _without(model: nn.Module, block: Block):
    """A forward hook that makes ``block`` act as if it were removed."""
    module = model.get_submodule(block.name)
    if block.how == "delete":
        return module.register_forward_hook(lambda m, args, out: args[0])
    short = getattr(module, block.shortcut)
    return module.register_forward_hook(
        lambda m, args, out: args[0] if short is None else short(args[0])
    )


@torch.no_grad()
def block_damage(
    model: nn.Module,
    data: DataLike,
    blocks: list[Block] | None = None,
    *,
    loss: LossLike = None,
    samples: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """``{block: L(without it) - L}``: the measured loss increase of removing each block
    alone, on ``samples`` training samples (lower = safer to drop)."""
    blocks = find_blocks(model) if blocks is None else blocks
    calib = as_dataset(data, "train").subset(samples, seed=seed)
    fn = resolve_loss(loss)
    device = next(model.parameters()).device

    def total() -> float:
        out, n = 0.0, 0
        for x, y in calib.batches(batch_size, device=device):
            out += float(fn(model(x), y)) * len(y)
            n += len(y)
        return out / max(n, 1)

    with preserved_modes(model, "eval"):
        base = total()
        damage = {}
        for b in blocks:
            handle = _without(model, b)
            try:
                damage[b.name] = total() - base
            finally:
                handle.remove()
    return damage


def drop_blocks(model: nn.Module, names: list[str]) -> nn.Module:
    """Remove the blocks ``names`` (from :func:`find_blocks`) in place; records the edit."""
    known = {b.name: b for b in find_blocks(model)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"cannot drop {', '.join(unknown)}: removable blocks are "
            f"{', '.join(known) or 'none (no transformer layers or residual blocks)'}"
        )
    for parent in {n.rpartition(".")[0] for n in names if known[n].how == "delete"}:
        layers = [b for b in known if b.rpartition(".")[0] == parent]
        if all(b in names for b in layers):
            raise ConfigError(
                f"would remove all {len(layers)} layers of {parent}; keep at least one"
            )
    blocks = [[n, known[n].how, known[n].shortcut] for n in names]
    record = {"kind": "drop_blocks", "blocks": blocks}
    apply_drop(model, record)
    record_edit(model, record)
    return model


@register_edit("drop_blocks", "whole transformer layers or residual blocks removed")
def apply_drop(model: nn.Module, record: dict[str, Any]) -> None:
    """Delete (layer lists) or replace by the shortcut (residual blocks), deepest index first."""
    try:
        entries = sorted(record["blocks"], key=lambda e: _index(e[0]), reverse=True)
        for name, how, shortcut in entries:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            if how == "delete":
                del parent[int(child)]
                owner = model.get_submodule(parent_name.rpartition(".")[0])
                if hasattr(owner, "num_layers"):
                    owner.num_layers = len(parent)
            else:
                block = getattr(parent, child) if not child.isdigit() else parent[int(child)]
                replacement = getattr(block, shortcut) or nn.Identity()
                setattr(parent, child, replacement)
    except (AttributeError, IndexError, KeyError, ValueError) as err:
        raise RunDirError(f"drop_blocks edit does not fit the model ({err})") from None


def _index(name: str) -> int:
    tail = name.rpartition(".")[2]
    return int(tail) if tail.isdigit() else -1
