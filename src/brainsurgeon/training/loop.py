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

from .. import distributed as parallel
from ..data.augment import augment
from ..data.core import DataBundle, DataLike, as_dataset
from ..distributed.training import local_rows, sync_grads, sync_module
from ..errors import ConfigError, NumericalError, UnsupportedLayerError
from ..losses import LossLike, resolve_loss
from ..models.adapters import Targets, compressible, layout_of
from ..state import original
from ..utils import module_device, numerical_step, resolve_device
from .checkpoint import EpochCheckpoint, fit_key, next_checkpoint
from .config import TrainConfig
from .evaluation import evaluate, score, task_loss

ModelLossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
LossFn = ModelLossFn  # the hook's type: ``loss_fn(model, x, y) -> scalar`` (distillation)
Penalty = Callable[[nn.Module], torch.Tensor]


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def model_loss(loss: LossLike = None) -> ModelLossFn:
    """``loss_fn(model, x, y) = loss(model(x), y)`` for a task loss (name, callable or None).

    A loss that returns more than one number (e.g. ``reduction="none"``) is refused.
    """
    fn = resolve_loss(loss)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = fn(model(x), y)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ConfigError(
                f"the loss returned {shape} on a training batch; a loss must return one "
                "scalar tensor (the batch mean), e.g. reduce it with .mean()"
            )
        return value.reshape(())

    return loss_fn


def weight_targets(model: nn.Module) -> Targets:
    """``{name: (module, tensor)}``: the adapter's compressible weights (no biases), or {}."""
    try:
        return compressible(model)
    except UnsupportedLayerError:
        return {}


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The modules owning :func:`weight_targets` (each once, in model order)."""
    return list({id(m): m for m, _ in weight_targets(model).values()}.values())


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Effective weight tensors (after parametrizations) of the compressible layers."""
    return [getattr(m, t) for m, t in weight_targets(model).values()]


@torch.no_grad()
def clip_unit_norms(model: nn.Module, max_norm: float) -> None:
    """Rescale each unit's incoming weights ``w_i`` so that ``||w_i||_2 <= max_norm``:
    ``w_i <- w_i * min(1, c / ||w_i||)``, under any parametrization.

    Units are the slices along output axis 0 of every compressible weight whose layout has
    its outputs on axis 0 and an input axis (rows of a Linear or LSTM weight, output filters of
    a conv); an Embedding or a transposed conv (outputs on axis 1) is left alone.
    """
    for module, tensor in weight_targets(model).values():
        layout = layout_of(module, tensor)
        if layout.out_axis != 0 or layout.in_axis is None:
            continue
        w = original(module, tensor)
        norms = w.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (max_norm / norms).clamp(max=1.0)
        w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))


def lp_penalty(l1: float = 0.0, l2: float = 0.0) -> Penalty:
    """``l1 * sum|w| + l2 * sum w^2`` over the compressible weights (no biases)."""

    def penalty(model: nn.Module) -> torch.Tensor:
        ws = weight_tensors(model)
        if not ws:
            return torch.zeros((), device=module_device(model))
        total = ws[0].new_zeros(())
        for w in ws:
            if l1:
                total = total + l1 * w.abs().sum()
            if l2:
                total = total + l2 * w.pow(2).sum()
        return total

    return penalty


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over ``params``; refuses when none of them can be trained
    (all ``requires_grad=False``: training would silently change nothing)."""
    params = list(params)
    tensors = [q for g in params for q in (g["params"] if isinstance(g, dict) else [g])]
    if config.epochs > 0 and not any(p.requires_grad for p in tensors):
        raise ConfigError(
            "nothing to train: every parameter has requires_grad=False, so training would "
            "change nothing; unfreeze what should learn (p.requires_grad_(True))"
        )
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


def fit(
    model: nn.Module,
    data: DataLike,
    config: TrainConfig | None = None,
    *,
    val: DataLike | None = None,
    device: str | torch.device = "auto",
    loss: LossLike = None,
    loss_fn: ModelLossFn | None = None,
    penalties: list[Penalty] | None = None,
    params: list[torch.nn.Parameter] | None = None,
    progress: bool = True,
    desc: str = "train",
    callback: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: EpochCheckpoint | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place; return one metrics dict per epoch.

    ``data``: a :class:`DataBundle` (train split used, val split for early stopping), a
    :class:`Dataset` or an ``(x, y)`` tuple of tensors (float targets for regression).
    ``loss``: the task loss optimised and reported on ``val`` (a name such as ``"mse"``, a
    callable ``(output, target) -> scalar``, or None: cross entropy for integer labels, mse
    for float targets). ``loss_fn(model, x, y)`` replaces the training objective altogether
    (distillation); ``val`` is still measured with ``loss``. ``penalties`` are added to the
    loss; ``params`` restricts what is optimised; ``callback(record)`` is called after every
    epoch. Early stopping (``patience``) keeps the epoch with the best validation accuracy
    (classification) or the lowest validation loss (other tasks). ``checkpoint`` (or the
    session of :func:`brainsurgeon.training.checkpoint.epoch_checkpoints`) saves model,
    optimizer and RNG states after every epoch and resumes from the newest one, bit-identically.
    Bit-identical for a seed on CPU; on CUDA some backward kernels (atomic adds) are not
    (see :data:`brainsurgeon.utils.NONDETERMINISTIC_CUDA`). A NaN or infinite loss or
    gradient raises :class:`NumericalError` naming the epoch, the batch and the tensor; the
    checkpoints of the finished epochs stay on disk.
    """
    config = config or TrainConfig()
    device = resolve_device(device)
    train_set, val = _splits(data, val, config)
    loss = task_loss(loss, train_set)
    objective = loss_fn or model_loss(loss)
    model.to(device)
    penalties = [*(penalties or []), *config_penalties(config)]
    opt = make_optimizer(params if params is not None else model.parameters(), config)
    sync_module(model)  # under torch.distributed: every rank starts from rank 0's weights
    gen = torch.Generator().manual_seed(config.seed)
    step = (opt, objective, penalties, gen, device)
    best = _Best(config.patience)
    ckpt = checkpoint if checkpoint is not None else next_checkpoint()
    key = fit_key(model, config, desc)
    history, first, stopped = _resumed(ckpt, model, opt, gen, best, key)
    for epoch in range(first, config.epochs):
        if stopped:
            break
        for group in opt.param_groups:
            group["lr"] = config.lr * lr_factor(config, epoch)
        record = _epoch(
            model, train_set, step, config, progress, f"{desc} {epoch + 1}/{config.epochs}"
        )
        record["epoch"], record["lr"] = epoch + 1, opt.param_groups[0]["lr"]
        measured = _validate(model, val, loss, device, record)
        history.append(record)
        if callback is not None:
            callback(record)
        stopped = best.stop(model, measured)
        if stopped:
            record["early_stopped"] = True
        if ckpt is not None:
            ckpt.save(epoch + 1, model, opt, gen, best, history, stopped, key)
    best.restore(model)
    model.eval()
    return history


def _resumed(ckpt, model, opt, gen, best, key) -> tuple[list[dict[str, Any]], int, bool]:
    """``(history, first epoch to run, early-stopped)`` from ``ckpt`` (nothing: a fresh run)."""
    restored = None if ckpt is None else ckpt.restore(model, opt, gen, key)
    if restored is None:
        return [], 0, False
    best.score = float(restored.best["score"])
    best.stale, best.state = restored.best["stale"], restored.best["state"]
    return restored.history, restored.epoch, restored.stopped


def config_penalties(config: TrainConfig) -> list[Penalty]:
    """The penalties ``config`` asks for: ``l1`` / ``l2`` and DropNeuron's ``group_lasso``."""
    out = []
    if config.l1 or config.l2:
        out.append(lp_penalty(config.l1, config.l2))
    if getattr(config, "group_lasso", 0.0):
        from ..pruning.regularizers import group_lasso  # pruning imports training

        out.append(group_lasso(config.group_lasso))
    return out


def _splits(data: DataLike, val: DataLike | None, config: TrainConfig):
    """``(train, val)`` datasets (a bundle's val split unless ``val`` is given)."""
    train_set = as_dataset(data, "train")
    if val is None and isinstance(data, DataBundle):
        val = data.val
    if (config.shift or config.noise) and not train_set.x.is_floating_point():
        raise ConfigError(
            f"shift / noise jitter images, but these inputs are {train_set.x.dtype} (token "
            "ids?); set shift=0 and noise=0 for this data"
        )
    return train_set, None if val is None else as_dataset(val, "val")


class _Best:
    """Early stopping: the best-scoring weights so far and the epochs since they improved."""

    def __init__(self, patience: int) -> None:
        self.patience, self.score, self.state, self.stale = patience, -math.inf, None, 0

    def stop(self, model: nn.Module, measured: float | None) -> bool:
        """Record this epoch's score; True once ``patience`` epochs passed without a gain."""
        if not self.patience or measured is None:
            return False
        if measured > self.score:
            self.score, self.state, self.stale = measured, copy.deepcopy(model.state_dict()), 0
            return False
        self.stale += 1
        return self.stale >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.patience and self.state is not None:
            model.load_state_dict(self.state)


def _validate(model, val, loss, device, record: dict[str, Any]) -> float | None:
    """Add ``val_accuracy`` (classification), ``val_loss`` (and ``val_mse``) to ``record``;
    return the score early stopping maximises (None without validation data)."""
    if val is None or not len(val):
        return None
    ev = evaluate(model, val, device=device, loss=loss)
    for key in ("accuracy", "loss", "mse", "mae"):
        if key in ev:
            record[f"val_{key}"] = ev[key]
    return score(ev)


def check_gradients(opt: torch.optim.Optimizer, names: dict[int, str], where: str) -> None:
    """A :class:`NumericalError` naming the first parameter whose gradient is NaN or inf.

    One fused check per batch (the sum of every gradient's sum is finite when all are);
    the per-tensor scan runs only when it is not.
    """
    grads = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if not grads or bool(torch.isfinite(torch.stack([p.grad.sum() for p in grads])).all()):
        return
    for p in grads:
        if not bool(torch.isfinite(p.grad).all()):
            bad = int((~torch.isfinite(p.grad)).sum())
            raise NumericalError(
                f"the gradient of {names.get(id(p), 'a parameter')} holds {bad} NaN or "
                f"infinite value(s) in {where}; lower the learning rate (--lr), clip the "
                "weights (max_norm) or check the inputs; finished epochs are kept"
            )


def _epoch(model, dataset, step, config, progress, desc):
    """One pass over ``dataset``; ``step = (optimizer, loss_fn, penalties, generator, device)``."""
    opt, loss_fn, penalties, gen, device = step
    model.train()
    start = time.perf_counter()
    total_loss, seen = 0.0, 0
    n_batches = math.ceil(len(dataset) / config.batch_size)
    show = progress and sys.stderr.isatty()
    bar = tqdm(total=n_batches, desc=desc, leave=False, disable=not show, unit="batch")
    names = {id(p): n for n, p in model.named_parameters()}
    batches = dataset.batches(config.batch_size, shuffle=True, generator=gen, device=device)
    for index, (x, y) in enumerate(batches, 1):
        if config.shift or config.noise:
            x = augment(x, noise=config.noise, shift=config.shift, generator=gen)
        opt.zero_grad(set_to_none=True)
        where = f"{desc}, batch {index}/{n_batches}"
        with numerical_step(where, "lower the learning rate (--lr)"):
            if parallel.active():
                loss = _parallel_backward(model, opt, loss_fn, penalties, x, y)
            else:
                loss = loss_fn(model, x, y)
                for pen in penalties:
                    loss = loss + pen(model)
        if not torch.isfinite(loss):
            bar.close()
            raise NumericalError(
                f"training loss became {loss.item()} in {where}; lower the learning rate "
                "(--lr) or the penalty strength, and check the inputs for NaN"
            )
        if loss.requires_grad:
            loss.backward()
        check_gradients(opt, names, where)
        opt.step()
        if config.max_norm:
            clip_unit_norms(model, config.max_norm)
        total_loss += loss.item() * y.shape[0]
        seen += y.shape[0]
        bar.update(1)
        if bar.n % 20 == 0:
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    bar.close()
    elapsed = time.perf_counter() - start
    return {"train_loss": total_loss / max(seen, 1), "seconds": round(elapsed, 3)}


def _parallel_backward(model, opt, loss_fn, penalties, x, y) -> torch.Tensor:
    """This rank's share of the global batch's gradient, then the sum over the ranks.

    Objective ``(n_r / n) mean_r(loss) + penalty / W``: the summed gradient is the one
    process's gradient of the global batch (see :mod:`brainsurgeon.distributed.training`).
    Returns the global loss (detached: the gradients are already in place).
    """
    rows, n = local_rows(int(y.shape[0])), int(y.shape[0])
    xs, ys = x[rows], y[rows]
    part = xs.new_zeros((), dtype=torch.float32)
    if ys.shape[0]:
        part = loss_fn(model, xs, ys) * (ys.shape[0] / n)
    share = 1.0 / parallel.world_size()
    for pen in penalties:
        part = part + pen(model) * share
    if part.requires_grad:
        part.backward()
    params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
    return torch.tensor(sync_grads(params, part))
