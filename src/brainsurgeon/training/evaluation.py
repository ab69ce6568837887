"""``evaluate``: the task's metric on a split of the data (accuracy, or mse/mae/rmse/r2, or loss).

The task comes from ``loss`` (:func:`brainsurgeon.losses.task_of`); with ``loss=None`` it comes
from the targets: integer labels are classification (cross entropy), float targets are
regression (mean squared error).

* classification: ``{"accuracy", "loss", "errors", "samples"}`` (loss = mean cross entropy);
* regression: ``{"task": "regression", "loss", "mse", "mae", "rmse", "r2", "samples"}`` with
  ``mse = mean (z - y)^2`` and ``mae = mean |z - y|`` over every target entry, ``rmse =
  sqrt(mse)`` and the variance-weighted ``r2 = 1 - sum (z - y)^2 / sum_c sum_n (y_nc -
  mean_c)^2``; ``loss`` is the given loss (mse by default);
* embedding (loss ``"cosine"``, targets = the original model's embeddings): ``{"task":
  "embedding", "loss", "cosine", "cosine_min", "top10", "samples"}`` with ``cosine = mean_n
  cos(z_n, y_n)`` and ``top10`` the mean overlap ``|N_10(z_n) & N_10(y_n)| / 10`` of each
  sample's 10 nearest neighbours (cosine, itself excluded) within the split: retrieval by
  the compressed embeddings against retrieval by the original ones;
* a custom callable loss: ``{"task": "custom", "loss", "samples"}``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.core import DataLike, Dataset, as_dataset
from ..errors import DataError
from ..losses import LossLike, checked, resolve_loss, task_of
from ..utils import module_device, preserved_modes, resolve_device


def task_loss(loss: LossLike, dataset: Dataset | None = None) -> LossLike:
    """``loss``, or the default for the data's targets: ``"mse"`` for float, cross entropy else."""
    if loss is None and dataset is not None and dataset.task == "regression":
        return "mse"
    return loss


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataLike,
    *,
    split: str = "test",
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    loss: LossLike = None,
) -> dict[str, Any]:
    """The task's metrics of ``model`` on ``split`` of ``data`` (see the module docstring).

    ``data``: a DataBundle (``split`` is taken), a Dataset or an ``(x, y)`` tuple of tensors.
    ``loss``: a registered name (``"cross_entropy"``, ``"mse"``, ``"l1"``), a callable
    ``(output, target) -> scalar`` or None (chosen from the targets' dtype).
    """
    dataset = as_dataset(data, split)
    loss = task_loss(loss, dataset)
    fn, task = resolve_loss(loss), task_of(loss)
    device = module_device(model) if device is None else resolve_device(device)
    sums: dict[str, Any] = {}
    with preserved_modes(model, "eval"):
        for i, (x, y) in enumerate(dataset.batches(batch_size, device=device)):
            out = model(x)
            _accumulate(sums, task, fn, out, y, f"batch {i + 1} of the {split} split")
    return _finish(sums, task)


def _accumulate(sums: dict[str, Any], task: str, fn, out: Tensor, y: Tensor, where: str) -> None:
    n = int(y.shape[0])
    if task == "regression" and y.numel() != out.numel():
        raise DataError(
            f"regression outputs have shape {tuple(out.shape)} but the targets "
            f"{tuple(y.shape)} on {where}; give the model one output per target value"
        )
    _add(sums, "samples", n)
    if task == "classification" and fn is F.cross_entropy:
        _add(sums, "loss", F.cross_entropy(out, y, reduction="sum").item())
    else:
        _add(sums, "loss", checked(fn, out, y, where).item() * n)
    if task == "classification":
        _add(sums, "correct", (out.argmax(1) == y).sum().item())
    elif task == "embedding":
        sums.setdefault("z", []).append(out.detach().float().cpu().reshape(n, -1))
        sums.setdefault("y", []).append(y.detach().float().cpu().reshape(n, -1))
    elif task == "regression":
        z = out.detach().to(torch.float64)
        t = y.to(torch.float64).reshape(z.shape)
        diff = (z - t).reshape(n, -1)
        t = t.reshape(n, -1)
        _add(sums, "sse", diff.pow(2).sum().item())
        _add(sums, "sae", diff.abs().sum().item())
        _add(sums, "entries", diff.numel())
        sums["t_sum"] = sums.get("t_sum", 0.0) + t.sum(0)  # per output column
        sums["t_sq"] = sums.get("t_sq", 0.0) + t.pow(2).sum(0)


def _add(sums: dict[str, Any], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def _finish(sums: dict[str, Any], task: str) -> dict[str, Any]:
    n = int(sums.get("samples", 0))
    safe = max(n, 1)
    if task == "classification":
        correct = int(sums.get("correct", 0))
        return {
            "accuracy": correct / safe,
            "loss": sums.get("loss", 0.0) / safe,
            "errors": n - correct,
            "samples": n,
        }
    out: dict[str, Any] = {"task": task, "loss": sums.get("loss", 0.0) / safe, "samples": n}
    if task == "embedding" and n:
        out.update(embedding_agreement(torch.cat(sums["z"]), torch.cat(sums["y"])))
    if task == "regression":
        entries = max(int(sums.get("entries", 0)), 1)
        mse = sums.get("sse", 0.0) / entries
        total = sums.get("t_sq", 0.0) - sums.get("t_sum", 0.0) ** 2 / safe
        sst = float(total.sum()) if isinstance(total, Tensor) else 0.0
        r2 = 1.0 - sums.get("sse", 0.0) / sst if sst > 0 else float("nan")
        out.update(mse=mse, mae=sums.get("sae", 0.0) / entries, rmse=math.sqrt(mse), r2=r2)
    return out


def embedding_agreement(z: Tensor, y: Tensor, k: int = 10) -> dict[str, float]:
    """``cosine`` (mean), ``cosine_min`` and ``top10``: see the module docstring.

    ``z`` (N, D) the model's embeddings, ``y`` (N, D) the reference ones; ``k`` is capped at
    ``N - 1``.
    """
    zn, yn = F.normalize(z.double(), dim=1), F.normalize(y.double(), dim=1)
    cos = (zn * yn).sum(1)
    out = {"cosine": float(cos.mean()), "cosine_min": float(cos.min())}
    k = min(k, len(z) - 1)
    if k >= 1:
        overlap = 0.0
        for start in range(0, len(z), 1024):  # (1024, N) blocks: bounded memory
            rows = slice(start, start + 1024)
            nz = _neighbours(zn[rows] @ zn.T, start, k)
            ny = _neighbours(yn[rows] @ yn.T, start, k)
            same = (nz.unsqueeze(2) == ny.unsqueeze(1)).any(2).sum(1)
            overlap += float(same.sum())
        out["top10"], out["neighbours"] = overlap / (len(z) * k), k
    return out


def _neighbours(sim: Tensor, start: int, k: int) -> Tensor:
    idx = torch.arange(sim.shape[0])
    sim[idx, idx + start] = -float("inf")  # a sample is not its own neighbour
    return sim.topk(k, dim=1).indices


def headline(result: dict[str, Any]) -> tuple[str, float]:
    """The one number to show for an :func:`evaluate` result: accuracy, mse or the loss."""
    if "accuracy" in result:
        return "accuracy", float(result["accuracy"])
    if "cosine" in result:
        return "cosine", float(result["cosine"])
    if "mse" in result:
        return "mse", float(result["mse"])
    return "loss", float(result["loss"])


def score(result: dict[str, Any]) -> float:
    """Higher is better: accuracy for classification, ``-loss`` otherwise (early stopping)."""
    if "accuracy" in result:
        return float(result["accuracy"])
    return float(result["cosine"]) if "cosine" in result else -float(result["loss"])


def describe(result: dict[str, Any]) -> str:
    """``"accuracy 0.9812"`` or ``"mse 0.0123, mae 0.0871"`` or ``"loss 0.52"``."""
    if "accuracy" in result:
        return f"accuracy {result['accuracy']:.4f}"
    if "cosine" in result:
        return (
            f"cosine {result['cosine']:.4f}, top-10 overlap {result.get('top10', float('nan')):.3f}"
        )
    if "mse" in result:
        return f"mse {result['mse']:.4g}, mae {result['mae']:.4g}, r2 {result['r2']:.4f}"
    return f"loss {result['loss']:.4g}"


def recorded_loss(config: dict[str, Any]) -> str | None:
    """The task loss a run's config records (``config["loss"]``, else ``training.loss``)."""
    loss = config.get("loss")
    if loss is None and isinstance(config.get("training"), dict):
        loss = config["training"].get("loss")
    return loss if isinstance(loss, str) else None
