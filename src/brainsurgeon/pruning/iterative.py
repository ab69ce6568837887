"""Rounds of prune + fine-tune: the pruning-specific parts of fine-tuning (Han's dropout
adjustment, group lasso, per-round seeds), evaluation, and undo on failure.

The fine-tuning itself is the pipeline's one :func:`brainsurgeon.pipeline.finetune`; files
(round checkpoints, resume) are the pipeline's too (:mod:`brainsurgeon.pipeline.store`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..data.core import DataLike
from ..losses import LossLike
from ..models.adapters import Targets, compressible_layers
from ..training import evaluate
from .config import PruneConfig
from .masks import Mask, find_mask
from .regularizers import group_lasso


def finetune_round(
    model: nn.Module,
    data: DataLike,
    config: PruneConfig,
    round_index: int,
    *,
    last: bool = False,
    loss: LossLike = None,
    device: torch.device | str = "auto",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Fine-tune after round ``round_index`` (``last``: the final round) as
    ``config.finetune_config`` says (Han 2015: the rate halved every 2 epochs), seeded from
    ``seed + round_index``, with the dropout adjustment and group-lasso penalty of ``config``."""
    from ..pipeline.finetune import finetune  # the pipeline imports pruning

    tune = config.finetune_config(round_index, last=last)
    penalties = [group_lasso(config.group_lasso)] if config.group_lasso else None
    with _adjusted_dropout(model, config.adjust_dropout):
        return finetune(
            model,
            data,
            tune,
            loss=loss,
            penalties=penalties,
            device=device,
            progress=progress,
            desc=f"fine-tune round {round_index}",
        )


def tune_and_measure(
    model: nn.Module, config: PruneConfig, r: int, rounds: int, data: DataLike, *,
    loss: LossLike, device, progress: bool,
) -> dict[str, Any]:  # fmt: skip
    """After round ``r`` of ``rounds``: the metrics as pruned, fine-tuning as ``config`` says
    (the last round's length may differ), the metrics after: the round record's fields."""
    before = evaluate_on(model, data, loss)
    out = {"accuracy_pruned": before.get("accuracy"), "loss_pruned": before["loss"]}
    if "cosine" in before:  # an embedding model: agreement with the original's embeddings
        out.update(cosine_pruned=before["cosine"], top10_pruned=before.get("top10"))
    last = r == rounds
    if config.finetune_config(r, last=last).epochs:
        out["finetune"] = finetune_round(
            model, data, config, r, last=last, loss=loss, device=device, progress=progress
        )
    ev = evaluate_on(model, data, loss)
    out.update(accuracy=ev.get("accuracy"), loss=ev["loss"])
    if "cosine" in ev:
        out.update(cosine=ev["cosine"], top10=ev.get("top10"))
    return out


def evaluate_on(model: nn.Module, data: DataLike, loss: LossLike = None) -> dict[str, Any]:
    """Test-split metrics of ``model`` under the task ``loss``."""
    return evaluate(model, data, split="test", loss=loss)


@contextlib.contextmanager
def unchanged_on_error(model: nn.Module, targets: Targets) -> Iterator[None]:
    """Undo everything the block did to ``model`` if it raises (any exception, Ctrl-C).

    Keeps a copy of the ``state_dict`` (one clone of every tensor: the model's size in
    memory, a memory copy in time) and which targets were masked; on an exception the
    masks added since are removed and the tensors and train/eval flags restored.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masked = {n for n, (m, t) in targets.items() if find_mask(m, t) is not None}
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    except BaseException:
        for name, (module, tensor_name) in targets.items():
            mask = find_mask(module, tensor_name)
            if name not in masked and mask is not None:
                _drop_mask(module, tensor_name, mask)
        model.load_state_dict(saved, strict=False)
        for module, flag in modes:
            module.training = flag
        raise


def _drop_mask(module: nn.Module, tensor_name: str, mask: Mask) -> None:
    chain = module.parametrizations[tensor_name]
    if len(chain) == 1:
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
        return
    del chain[next(i for i, p in enumerate(chain) if p is mask)]


@contextlib.contextmanager
def _adjusted_dropout(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Han 2015: ``D_r = D_o sqrt(C_ir / C_io)`` while retraining; restored afterwards.

    ``C_i`` counts the connections of the layer whose outputs the dropout drops (the closest
    compressible layer before it in module order): all of them originally, the unpruned ones
    now.
    """
    changed: list[tuple[nn.Module, float]] = []
    if enabled:
        layer = None
        layers = dict(compressible_layers(model))
        for name, module in model.named_modules():
            if name in layers:
                layer = layers[name]
            elif isinstance(module, nn.modules.dropout._DropoutNd) and layer is not None:
                mask = find_mask(layer, "weight")
                if mask is not None and module.p > 0:
                    ratio = float(mask.mask.sum()) / mask.mask.numel()
                    changed.append((module, module.p))
                    module.p = module.p * math.sqrt(ratio)
    try:
        yield
    finally:
        for module, p in changed:
            module.p = p
