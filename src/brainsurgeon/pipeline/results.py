"""What every command writes at the end: the final evaluation and the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .. import runs
from .._io import _default
from ..data.core import DataBundle, DataLike
from ..losses import LossLike
from ..training import evaluate


def final_metrics(model: nn.Module, data: DataLike, loss: LossLike = None) -> dict[str, Any]:
    """``test_accuracy``, ``test_loss``, ``test_errors`` (and ``val_*`` for a bundle); for a
    regression loss ``test_mse``, ``test_mae``, ... instead of accuracy and errors."""
    metrics: dict[str, Any] = {}
    for split in ("test", "val") if isinstance(data, DataBundle) else ("test",):
        ev = evaluate(model, data, split=split, loss=loss)
        for key in ("accuracy", "loss", "mse", "mae", "rmse", "r2"):
            if key in ev:
                metrics[f"{split}_{key}"] = ev[key]
        if split == "test" and "errors" in ev:
            metrics["test_errors"] = ev["errors"]
    return metrics


def data_config(data: DataLike | None, step: dict[str, Any]) -> dict[str, Any]:
    """A fresh run config: the data spec and normalization (for a bundle) and one history step."""
    cfg: dict[str, Any] = {}
    if isinstance(data, DataBundle):
        cfg.update(data=data.spec, normalization=data.normalization)
    cfg["history"] = [dict(step)]
    return cfg


def save_result(
    model: nn.Module,
    out_dir: str | Path,
    *,
    config: dict[str, Any],
    data: DataLike | None = None,
    metrics: dict[str, Any] | None = None,
    files: dict[str, str | bytes] | None = None,
    force: bool = False,
) -> Path:
    """Save ``model`` as a run directory with ``metrics`` plus the final evaluation on ``data``.

    ``config``: the run's fields (usually ``parent_run.child_config(step)`` with a
    ``compression`` entry). The directory is written atomically.
    """
    full = {**(metrics or {}), **(final_metrics(model, data) if data is not None else {})}
    return runs.save(model, out_dir, config=config, metrics=full, files=files, force=force)


def save_child(
    model: nn.Module,
    parent: runs.Run,
    out_dir: str | Path,
    *,
    step: dict[str, Any],
    compression: dict[str, Any] | None = None,
    data: DataLike | None = None,
    metrics: dict[str, Any] | None = None,
    force: bool = False,
    **fields: Any,
) -> Path:
    """Save ``model``, derived from the run ``parent`` by ``step``, as a new run directory.

    The config is the parent's with ``step`` appended to its history (and the parent's path),
    ``compression`` entries merged in (``{"factorization": summary}``) and ``fields`` set
    (``training=...``); the metrics are ``metrics`` plus the final evaluation on ``data``.
    What ``brainsurgeon factorize | distill | quantize`` write at the end::

        save_child(model, parent, args.out, step={"step": "factorize", ...},
                   compression={"factorization": summary}, data=data, force=args.force)
    """
    cfg = parent.child_config(step)
    cfg.update(fields)
    cfg["compression"] = {**cfg.get("compression", {}), **(compression or {})}
    return save_result(model, out_dir, config=cfg, data=data, metrics=metrics, force=force)


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` (tensors and paths converted), newline-terminated."""
    return json.dumps(obj, indent=2, default=_default) + "\n"
