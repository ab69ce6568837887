"""The pruning entry points: ``saliency`` (scores only) and ``prune`` (score, select, mask,
fine-tune, repeat; resumable)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import runs, state
from ..data.core import DataBundle, DataLike, Dataset, as_dataset
from ..errors import ConfigError, RunDirError, UnsupportedLayerError
from ..training import evaluate
from ..utils import resolve_device
from .config import PruneConfig
from .criteria import CRITERIA, SaliencyContext, make_criterion
from .iterative import RoundStore, check_out_dir, finetune
from .schedules import plan
from .selection import sparsity, total_sparsity
from .step import current_masks, prune_step
from .targets import PRUNABLE, eligible_targets


@dataclass
class PruneResult:
    """What :func:`prune` did: final sparsity per tensor and overall, the summed predicted
    damage (loss-scale criteria; None otherwise) and one record per round (target and
    reached sparsity, accuracy before and after fine-tuning where data was given)."""

    sparsity: dict[str, float]
    total_sparsity: float
    predicted_damage: float | None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    config: PruneConfig = field(default_factory=PruneConfig)
    out_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "total_sparsity": self.total_sparsity,
            "predicted_damage": self.predicted_damage,
            "rounds": self.rounds,
            "config": self.config.to_dict(),
            "out_dir": str(self.out_dir) if self.out_dir else None,
        }


def saliency(
    model: nn.Module,
    criterion: str,
    data: DataLike | None = None,
    *,
    samples: int = 1000,
    seed: int = 0,
    device: str | torch.device = "auto",
    include_bias: bool = False,
    batch_size: int = 256,
    progress: bool = False,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Predicted damage of removing each entry: ``{"fc1.weight": scores (same shape)}``.

    ``data``: samples for the statistics (the train split of a bundle), limited to ``samples``
    (seeded subset); ``options`` go to the criterion (e.g. ``hessian="ggn"``). Low = safe to
    prune. The model is scored in eval mode and left unchanged.
    """
    crit = make_criterion(criterion, **options)
    calib = _calibration(data, samples, seed, criterion, crit.needs_data)
    device = resolve_device(device)
    model.to(device)
    targets = eligible_targets(model, include_bias=include_bias)
    ctx = SaliencyContext(
        model=model,
        targets=targets,
        data=calib,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        masks=current_masks(targets),
    )
    with _eval_mode(model):
        scores = crit.scores(ctx)
    return {n: s.detach().cpu() for n, s in scores.items()}


def prune(
    model: nn.Module,
    config: PruneConfig | None = None,
    data: DataLike | None = None,
    *,
    device: str | torch.device = "auto",
    progress: bool = True,
    out_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    base_config: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> PruneResult:
    """Prune ``model`` in place following ``config``; returns a :class:`PruneResult`.

    Per round: criterion scores -> selection (the round's target sparsity, exactly) ->
    criterion compensation (OBS) -> masks; then fine-tuning when ``finetune_epochs > 0``.
    ``out_dir``: write each round to ``out_dir/rounds/NN/`` and the final run directory
    (``brainsurgeon.load`` restores the masks); ``resume`` continues after the last complete
    round; ``force`` discards an existing ``out_dir``. ``base_config``: the parent run's config
    (with its history step) for the saved run. ``callback(record)`` runs after each round.
    """
    config = config or PruneConfig()
    crit = make_criterion(config.criterion, **config.criterion_options)
    if config.needs_data and data is None:
        why = "fine-tuning" if config.finetune_epochs else f"criterion {config.criterion!r}"
        raise ConfigError(f"{why} needs data; pass data=... (CLI: the run's own data is used)")
    if data is not None:
        as_dataset(data, "train")  # validates the type before any work
    device = resolve_device(device)
    targets = eligible_targets(
        model,
        include_bias=config.include_bias,
        include_first=config.include_first,
        include_last=config.include_last,
    )
    layer_plan = _layer_plan(config, targets, model)
    targets_plan = plan(
        config.schedule, config.amount, config.rounds, config.initial_amount, config.spacing
    )
    store = _open_store(model, config, out_dir, resume, force, base_config)
    model.to(device)
    if store is not None and (store.root / runs.CONFIG_FILE).exists():
        return _finished(model, config, store)
    records = _resume(model, store) if store is not None and resume else []
    for r in range(len(records) + 1, len(targets_plan) + 1):
        record = _round(
            model, crit, config, targets, r, targets_plan, layer_plan, data, device, progress
        )
        records.append(record)
        if store is not None:
            store.save(model, r, record)
        if callback is not None:
            callback(record)
    result = _result(config, targets, records, out_dir)
    if store is not None:
        _save_final(model, result, store, data)
    return result


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake the pruning masks into the weights (zeros stay, masks go); other state stays."""
    return state.make_permanent(model, kinds={"mask"})


def _round(model, crit, config, targets, r, targets_plan, layer_plan, data, device, progress):
    start = time.perf_counter()
    prev = targets_plan[r - 2] if r > 1 else 0.0
    target = targets_plan[r - 1]
    calib = (
        _calibration(data, config.samples, config.seed + r, config.criterion, crit.needs_data)
        if data is not None
        else None
    )
    damages = []
    with _eval_mode(model):
        for j in range(1, config.obs_steps + 1):
            frac = j / config.obs_steps
            amount = prev + (target - prev) * frac
            layers = _interpolate(layer_plan, r, frac)
            if amount <= 0 and not layers:
                continue
            step = prune_step(
                model,
                crit,
                config,
                targets,
                amount=amount,
                layer_amounts=layers,
                data=calib,
                seed=config.seed + r,
                device=device,
                progress=progress,
            )
            damages.append(step.pop("predicted_damage"))
    keep = current_masks(targets)
    record: dict[str, Any] = {
        "round": r,
        "target_sparsity": target,
        "sparsity": total_sparsity(keep),
        "layer_sparsity": sparsity(keep),
        "predicted_damage": None if None in damages or not damages else sum(damages),
        **({"lam": step["lam"]} if damages and "lam" in step else {}),
    }
    if data is not None:
        record["accuracy_pruned"] = _evaluate(model, data)["accuracy"]
        if config.finetune_epochs:
            record["finetune"] = finetune(model, data, config, r, device=device, progress=progress)
        ev = _evaluate(model, data)
        record.update(accuracy=ev["accuracy"], loss=ev["loss"])
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _layer_plan(config: PruneConfig, targets, model: nn.Module) -> list[dict[str, float]] | None:
    """Per-round per-tensor targets for ``layer_sparsity`` (None without it)."""
    if config.layer_sparsity is None:
        return None
    wanted = {}
    for key, value in config.layer_sparsity.items():
        name = key if key in targets else f"{key}.weight"
        if name not in targets:
            module = dict(model.named_modules()).get(key.removesuffix(".weight"))
            if module is not None and not isinstance(module, PRUNABLE):
                raise UnsupportedLayerError(
                    f"layer_sparsity names {key!r}, a {type(module).__name__}: only Linear and "
                    f"Conv layers are pruned; eligible: {', '.join(targets)}"
                )
            raise ConfigError(
                f"layer_sparsity names {key!r}, which is not an eligible tensor; "
                f"eligible: {', '.join(targets)}"
            )
        wanted[name] = float(value)
    finals = {n: wanted.get(n, config.amount) for n in targets}
    per_layer = {
        n: plan(config.schedule, a, config.rounds, config.initial_amount, config.spacing)
        if a > 0
        else [0.0] * config.rounds
        for n, a in finals.items()
    }
    return [{n: p[r] for n, p in per_layer.items()} for r in range(config.rounds)]


def _interpolate(layer_plan, r: int, frac: float) -> dict[str, float] | None:
    if layer_plan is None:
        return None
    prev = layer_plan[r - 2] if r > 1 else {n: 0.0 for n in layer_plan[0]}
    return {n: prev[n] + (a - prev[n]) * frac for n, a in layer_plan[r - 1].items()}


def _calibration(data, samples: int, seed: int, criterion: str, needs: bool) -> Dataset | None:
    if data is None:
        if needs:
            raise ConfigError(
                f"criterion {criterion!r} needs data to measure the loss; pass "
                "data=... (CLI: the run's training split, --samples N to limit it)"
            )
        return None
    return as_dataset(data, "train").subset(samples, seed=seed)


def _evaluate(model, data) -> dict[str, float]:
    return evaluate(model, data, split="test")


class _eval_mode:
    """Context manager: eval mode inside, the previous mode restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was)


def _open_store(model, config, out_dir, resume, force, base_config) -> RoundStore | None:
    if out_dir is None:
        if resume:
            raise ConfigError("resume needs out_dir (the directory holding the rounds)")
        return None
    if state.spec_of(model) is None:
        raise RunDirError(
            "saving a pruned run needs a model built with brainsurgeon.build_model "
            "(it records how to rebuild it); or attach a spec with "
            "brainsurgeon.state.set_spec, or leave out_dir unset"
        )
    check_out_dir(out_dir, resume=resume, force=force)
    store = RoundStore(out_dir, config, base_config)
    if store.root.exists() and force and not resume:
        store.clear()
    return store


def _resume(model, store: RoundStore) -> list[dict[str, Any]]:
    done = store.completed()
    if not done:
        return []
    store.load(model, done[-1])
    return store.records()


def _finished(model, config, store: RoundStore) -> PruneResult:
    """``resume`` on a complete run: load its final state and report it."""
    cfg = runs.read_config(store.root)
    store.check_config(
        {"pruning_config": cfg.get("compression", {}).get("pruning", {}).get("config", {})}
    )
    run = runs.load_run(store.root)
    model.load_state_dict(_with_masks(model, run.model), strict=True)
    info = cfg["compression"]["pruning"]
    return PruneResult(
        info["sparsity"],
        info["total_sparsity"],
        info.get("predicted_damage"),
        info["rounds"],
        config,
        store.root,
    )


def _with_masks(model: nn.Module, loaded: nn.Module) -> dict[str, torch.Tensor]:
    from .masks import masks_of, set_mask

    for name in masks_of(loaded):
        module_name, _, tensor_name = name.rpartition(".")
        module = model.get_submodule(module_name)
        set_mask(module, tensor_name, torch.ones_like(getattr(module, tensor_name), dtype=bool))
    device = next(iter(model.state_dict().values())).device
    return {k: v.to(device) for k, v in loaded.state_dict().items()}


def _result(config, targets, records, out_dir) -> PruneResult:
    keep = current_masks(targets)
    damages = [r["predicted_damage"] for r in records]
    damage = None if not damages or None in damages else float(sum(damages))
    return PruneResult(
        sparsity(keep),
        total_sparsity(keep),
        damage,
        records,
        config,
        Path(out_dir) if out_dir else None,
    )


def _save_final(model, result: PruneResult, store: RoundStore, data) -> None:
    cfg = dict(store.base_config) if store.base_config else _data_config(result.config, data)
    cfg["compression"] = {
        **cfg.get("compression", {}),
        "pruning": {
            "config": result.config.to_dict(),
            "criterion": result.config.criterion,
            "sparsity": result.sparsity,
            "total_sparsity": result.total_sparsity,
            "predicted_damage": result.predicted_damage,
            "rounds": result.rounds,
        },
    }
    metrics = {
        "total_sparsity": result.total_sparsity,
        "sparsity": result.sparsity,
        "predicted_damage": result.predicted_damage,
    }
    if data is not None:
        for split in ("test", "val") if isinstance(data, DataBundle) else ("test",):
            ev = evaluate(model, data, split=split)
            metrics[f"{split}_accuracy"], metrics[f"{split}_loss"] = ev["accuracy"], ev["loss"]
            if split == "test":
                metrics["test_errors"] = ev["errors"]
    files = {f"rounds/{r['round']:02d}/metrics.json": _json(r) for r in result.rounds}
    runs.save(model, store.root, config=cfg, metrics=metrics, files=files, force=True)


def _data_config(config: PruneConfig, data) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if isinstance(data, DataBundle):
        cfg.update(data=data.spec, normalization=data.normalization)
    cfg["history"] = [{"step": "prune", "criterion": config.criterion, "amount": config.amount}]
    return cfg


def _json(obj: Any) -> str:
    import json

    from .._io import _default

    return json.dumps(obj, indent=2, default=_default) + "\n"


__all__ = ["CRITERIA", "PruneConfig", "PruneResult", "make_permanent", "prune", "saliency"]
