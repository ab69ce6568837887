"""Train, fine-tune and evaluate: one seeded loop for every technique.

``fit`` is used for training from scratch, fine-tuning after pruning or quantization and
distillation (through ``loss_fn``). Parametrized weights (masks, quantizers) need no special
care: the forward pass sees ``W * M`` so pruned weights stay exactly zero.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.augment import augment
from ..data.core import DataBundle, DataLike, Dataset, as_dataset
from ..errors import NumericalError
from ..state import original
from ..utils import module_device, resolve_device
from .config import TrainConfig

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Penalty = Callable[[nn.Module], torch.Tensor]


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear/Conv layers of ``model``, whose weights penalties and norm caps act on."""
    return [
        m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
    ]


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Effective weight tensors (after parametrizations) of Linear/Conv layers."""
    return [m.weight for m in weight_layers(model)]


@torch.no_grad()
def clip_unit_norms(model: nn.Module, max_norm: float) -> None:
    """Rescale each unit's incoming weights ``w_i`` (dim 0 of every Linear/Conv weight, under any
    parametrization) so that ``||w_i||_2 <= max_norm``: ``w_i <- w_i * min(1, c / ||w_i||)``."""
    for m in weight_layers(model):
        w = original(m)
        norms = w.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (max_norm / norms).clamp(max=1.0)
        w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))


def lp_penalty(l1: float = 0.0, l2: float = 0.0) -> Penalty:
    """``l1 * sum|w| + l2 * sum w^2`` over layer weights."""

    def penalty(model: nn.Module) -> torch.Tensor:
        ws = weight_tensors(model)
        total = ws[0].new_zeros(())
        for w in ws:
            if l1:
                total = total + l1 * w.abs().sum()
            if l2:
                total = total + l2 * w.pow(2).sum()
        return total

    return penalty


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Multiplier of the base learning rate at ``epoch`` (0-based)."""
    if config.schedule == "step":
        return config.lr_gamma ** (epoch // max(config.lr_step, 1))
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(config.epochs, 1)))
    return 1.0


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataLike,
    *,
    split: str = "test",
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Accuracy, mean cross-entropy loss and error count on a split of ``data``."""
    dataset = as_dataset(data, split)
    device = module_device(model) if device is None else resolve_device(device)
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in dataset.batches(batch_size, device=device):
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += y.numel()
    model.train(was_training)
    n = max(n, 1)
    return {"accuracy": correct / n, "loss": loss_sum / n, "errors": n - correct, "samples": n}


def fit(
    model: nn.Module,
    data: DataLike,
    config: TrainConfig | None = None,
    *,
    val: Dataset | None = None,
    device: str | torch.device = "auto",
    loss_fn: LossFn | None = None,
    penalties: list[Penalty] | None = None,
    params: list[torch.nn.Parameter] | None = None,
    progress: bool = True,
    desc: str = "train",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place; return one metrics dict per epoch.

    ``data``: a :class:`DataBundle` (train split used, val split for early stopping) or a
    :class:`Dataset`. ``loss_fn(model, x, y)`` replaces cross entropy (distillation);
    ``penalties`` are added to the loss; ``params`` restricts what is optimised;
    ``on_epoch(record)`` is called after every epoch (progress lines, checkpoints).
    """
    config = config or TrainConfig()
    device = resolve_device(device)
    train_set = as_dataset(data, "train")
    if val is None and isinstance(data, DataBundle):
        val = data.val
    model.to(device)
    loss_fn = loss_fn or cross_entropy_loss
    penalties = list(penalties or [])
    if config.l1 or config.l2:
        penalties.append(lp_penalty(config.l1, config.l2))
    opt = make_optimizer(params if params is not None else model.parameters(), config)
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    best = (-1.0, None)
    stale = 0
    for epoch in range(config.epochs):
        for group in opt.param_groups:
            group["lr"] = config.lr * lr_factor(config, epoch)
        record = _epoch(
            model,
            train_set,
            opt,
            loss_fn,
            penalties,
            config,
            gen,
            device,
            progress,
            f"{desc} {epoch + 1}/{config.epochs}",
        )
        record["epoch"] = epoch + 1
        record["lr"] = opt.param_groups[0]["lr"]
        if val is not None and len(val):
            ev = evaluate(model, val, device=device)
            record["val_accuracy"], record["val_loss"] = ev["accuracy"], ev["loss"]
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if config.patience and val is not None:
            if record["val_accuracy"] > best[0]:
                best, stale = (record["val_accuracy"], copy.deepcopy(model.state_dict())), 0
            else:
                stale += 1
                if stale >= config.patience:
                    record["early_stopped"] = True
                    break
    if config.patience and best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return history


def _epoch(model, dataset, opt, loss_fn, penalties, config, gen, device, progress, desc):
    model.train()
    start = time.perf_counter()
    total_loss, seen = 0.0, 0
    n_batches = math.ceil(len(dataset) / config.batch_size)
    show = progress and sys.stderr.isatty()
    bar = tqdm(total=n_batches, desc=desc, leave=False, disable=not show, unit="batch")
    for x, y in dataset.batches(config.batch_size, shuffle=True, generator=gen, device=device):
        if config.shift or config.noise:
            x = augment(x, noise=config.noise, shift=config.shift, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, x, y)
        for pen in penalties:
            loss = loss + pen(model)
        if not torch.isfinite(loss):
            bar.close()
            raise NumericalError(
                f"training loss became {loss.item()} in {desc}; lower the learning rate "
                "(--lr) or the penalty strength"
            )
        loss.backward()
        opt.step()
        if config.max_norm:
            clip_unit_norms(model, config.max_norm)
        total_loss += loss.item() * y.numel()
        seen += y.numel()
        bar.update(1)
        if bar.n % 20 == 0:
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    bar.close()
    elapsed = time.perf_counter() - start
    return {"train_loss": total_loss / max(seen, 1), "seconds": round(elapsed, 3)}
