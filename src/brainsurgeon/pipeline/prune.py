"""``prune_run``: :func:`brainsurgeon.prune` with round checkpoints, ``resume``, ``force`` and
the final run directory (what ``brainsurgeon prune`` and long scripts use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed as parallel
from .. import runs, state
from ..data.core import DataLike
from ..errors import ConfigError, RunDirError
from ..losses import LossLike
from ..pruning.api import PruneResult, plan_prune, prune_rounds, result_of
from ..pruning.config import PruneConfig
from ..pruning.iterative import unchanged_on_error
from ..pruning.masks import masks_of, set_mask
from ..utils import resolve_device
from .finetune import Callback
from .results import data_config, dumps, final_metrics
from .store import RoundStore, check_out_dir


def prune_run(
    model: nn.Module,
    config: PruneConfig,
    data: DataLike | None = None,
    *,
    out_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    base_config: dict[str, Any] | None = None,
    loss: LossLike = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    callback: Callback | None = None,
) -> PruneResult:
    """Prune ``model`` like :func:`brainsurgeon.prune`, saving each round and the final run.

    Each round goes to ``out_dir/rounds/NN/``; the finished run (loadable with
    ``brainsurgeon.load``, masks included) to ``out_dir``. ``resume`` continues after the last
    complete round (or reports a finished run and loads its state); ``force`` discards an
    existing ``out_dir``. ``base_config``: the parent run's config with its history step.
    Every option is checked before any file is written or any weight changes; a run that
    raises (Ctrl-C included) keeps its finished rounds on disk and leaves ``model`` as it was.
    """
    plan = plan_prune(model, config, data, loss=loss)  # validates; touches nothing
    store = open_store(model, config, out_dir, resume=resume, force=force, base_config=base_config)
    device = resolve_device(device)
    model.to(device)
    if (store.root / runs.CONFIG_FILE).exists():
        return _finished(model, config, store)
    parallel.barrier("reading the output directory")  # before rank 0 writes the first round
    with unchanged_on_error(model, plan.targets):  # the finished rounds stay on disk
        records = _resume(model, store) if resume else []
        start = len(records) + 1
        for record in prune_rounds(
            model, plan, data, device=device, progress=progress, start=start
        ):
            records.append(record)
            store.save(model, record["round"], record)
            if callback is not None:
                callback(record)
    result = result_of(plan, records)
    result.out_dir = store.root
    _save_final(model, result, store, data, loss)
    return result


def open_store(
    model: nn.Module,
    config: PruneConfig,
    out_dir: str | Path | None,
    *,
    resume: bool,
    force: bool,
    base_config: dict[str, Any] | None,
) -> RoundStore:
    """Check ``out_dir`` (refused if it holds something else) and open its round store."""
    if out_dir is None:
        raise ConfigError("resume needs out_dir (the directory holding the rounds)")
    if state.spec_of(model) is None:
        raise RunDirError(
            "saving a pruned run needs a model built with brainsurgeon.build_model "
            "(it records how to rebuild it); or attach a spec with "
            "brainsurgeon.state.set_spec, or call brainsurgeon.prune (no files)"
        )
    check_out_dir(out_dir, resume=resume, force=force)
    store = RoundStore(out_dir, config, base_config)
    if store.root.exists() and force and not resume:
        store.clear()
    parallel.barrier("opening the output directory")  # every rank has checked it, rank 0 cleared
    return store


def _resume(model: nn.Module, store: RoundStore) -> list[dict[str, Any]]:
    done = store.completed()
    if not done:
        return []
    store.load(model, done[-1])
    return store.records()


def _finished(model: nn.Module, config: PruneConfig, store: RoundStore) -> PruneResult:
    """``resume`` on a complete run: load its final state and report it."""
    cfg = runs.read_config(store.root)
    info = cfg.get("compression", {}).get("pruning", {})
    store.check_config({"pruning_config": info.get("config", {})})
    run = runs.load_run(store.root)
    for name in masks_of(run.model):  # the same parametrizations, then the same tensors
        module_name, _, tensor_name = name.rpartition(".")
        module = model.get_submodule(module_name)
        set_mask(module, tensor_name, torch.ones_like(getattr(module, tensor_name), dtype=bool))
    device = next(iter(model.state_dict().values())).device
    model.load_state_dict({k: v.to(device) for k, v in run.model.state_dict().items()})
    return PruneResult(
        info["sparsity"],
        info["total_sparsity"],
        info.get("predicted_damage"),
        info["rounds"],
        config,
        store.root,
        info.get("model_sparsity"),
        info.get("left_dense", {}),
    )


def _save_final(model: nn.Module, result: PruneResult, store: RoundStore, data, loss=None) -> None:
    step = {"step": "prune", "criterion": result.config.criterion, "amount": result.config.amount}
    cfg = dict(store.base_config) if store.base_config else data_config(data, step)
    cfg["compression"] = {
        **cfg.get("compression", {}),
        "pruning": {
            "config": result.config.to_dict(),
            "criterion": result.config.criterion,
            "sparsity": result.sparsity,
            "total_sparsity": result.total_sparsity,
            "predicted_damage": result.predicted_damage,
            "rounds": result.rounds,
            "model_sparsity": result.model_sparsity,
            "left_dense": result.left_dense,
        },
    }
    metrics = {
        "total_sparsity": result.total_sparsity,
        "model_sparsity": result.model_sparsity,
        "sparsity": result.sparsity,
        "predicted_damage": result.predicted_damage,
        **(final_metrics(model, data, loss) if data is not None else {}),
    }
    files = {f"rounds/{r['round']:02d}/metrics.json": dumps(r) for r in result.rounds}
    runs.save(model, store.root, config=cfg, metrics=metrics, files=files, force=True)
