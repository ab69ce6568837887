"""Compare pruning criteria (and quantizers) under one budget.

Every cell (criterion x sparsity x seed) starts from the same trained model, scores on the
*same* calibration samples (drawn once with ``config.seed``), gets the same fine-tuning
budget (``finetune_epochs`` at ``finetune_lr`` after each round, Han's halving schedule) and
is evaluated on the whole test split. Seeds vary what is random by nature: the ``random``
criterion's draw and the fine-tuning shuffle; a deterministic criterion without fine-tuning
therefore gives the same accuracy for every seed. Each finished cell is one atomic JSON file
in ``OUT/cells/``; re-running the same comparison skips them.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import write_json, write_text
from ..config import Config
from ..errors import ConfigError, check_fraction, check_positive_int
from ..runs import Run
from ..utils import resolve_device
from .common import (
    ExperimentDir,
    Log,
    mean_std,
    open_base,
    quality,
    size_metrics,
    stamp,
    tensor_hash,
)

SCHEDULES = ("oneshot", "iterative")


@dataclass(frozen=True)
class CompareConfig(Config):
    """What to compare. ``quantizers``: ``"kmeans:5"``, ``"uniform:8"``, ``"binary"``, ...
    (method[:bits]). ``rounds``: prune/fine-tune rounds of the iterative schedule.
    ``criterion_options``: ``{"obs": {"block_size": 128}}``, options per criterion.
    ``layers`` / ``exclude``: glob patterns choosing the pruned tensors; ``loss``: a
    registered loss name (None: cross entropy)."""

    criteria: tuple[str, ...] = ("random", "magnitude")
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    schedule: str = "oneshot"
    rounds: int = 3
    seeds: int = 1
    seed: int = 0
    samples: int = 1000
    scheme: str = "global"
    finetune_epochs: int = 0
    finetune_lr: float = 0.005
    quantizers: tuple[str, ...] = ()
    criterion_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    loss: str | None = None

    def __post_init__(self) -> None:
        from ..losses import LOSSES
        from ..pruning import CRITERIA, make_criterion

        if self.loss is not None:
            LOSSES.get(self.loss)

        if not self.criteria and not self.quantizers:
            raise ConfigError(
                "criteria: the list is empty (and no quantizers given); name at "
                "least one, e.g. --criteria random,magnitude,obd"
            )
        for name in self.criteria:
            CRITERIA.get(name)
        for name, options in self.criterion_options.items():
            if name not in self.criteria:
                raise ConfigError(
                    f"criterion_options names {name!r}, which is not among the "
                    f"criteria {list(self.criteria)}"
                )
            make_criterion(name, **options)
        if self.criteria and not self.sparsities:
            raise ConfigError("sparsities: the list is empty; e.g. --sparsities 0.5,0.9")
        for s in self.sparsities:
            check_fraction("sparsities", s)
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        for name in ("rounds", "seeds", "samples"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("finetune_epochs", self.finetune_epochs, allow_zero=True)
        if not self.finetune_lr > 0:
            raise ConfigError(f"finetune_lr must be > 0, got {self.finetune_lr}")
        for spec in self.quantizers:
            quant_config(spec, seed=0, finetune_epochs=0, finetune_lr=0.01, samples=1)


def quant_config(spec: str, *, seed: int, finetune_epochs: int, finetune_lr: float, samples: int):
    """``"kmeans:5"`` -> ``KMeansConfig(bits=5, ...)`` (validated); ``samples`` only for
    methods that calibrate (gptq)."""
    from ..quantization import QUANTIZERS
    from ..quantization import quant_config as build

    method, _, bits = spec.partition(":")
    if bits and not bits.isdigit():
        raise ConfigError(f"quantizers: {spec!r} must be METHOD or METHOD:BITS, e.g. kmeans:5")
    takes = QUANTIZERS.get(method).config.options()
    extra = {"samples": samples} if "samples" in takes else {}
    return build(
        method,
        bits=int(bits) if bits else None,
        seed=seed,
        finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr,
        **extra,
    )


def compare(
    run: str | os.PathLike | Run,
    config: CompareConfig,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    force: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """Run (or resume) a comparison; write ``OUT/compare.json``, plots and ``summary.md``.

    Returns the ``compare.json`` payload: the baseline, every cell, and per method and
    sparsity (or bits) the mean / std / min / max of test accuracy over seeds.
    """
    from ..training.evaluation import recorded_loss

    base = open_base(run)
    if config.loss is None:  # the run's own task loss (an embedding model's: cosine)
        config = config.replace(loss=recorded_loss(base.config))
    out = ExperimentDir(out_dir, "compare", config.to_dict(), force=force)
    device = resolve_device(device)
    data = base.data(progress=False)
    calib = data.train.subset(config.samples, seed=config.seed)
    budget = {
        "calibration_samples": len(calib),
        "calibration_hash": tensor_hash(calib.x, calib.y),
        "finetune_epochs": config.finetune_epochs,
        "finetune_lr": config.finetune_lr,
    }
    if config.criteria:  # a pattern that matches nothing: refused before OUT is written
        from ..models.adapters.tensors import compressible

        compressible(base.model, layers=config.layers, exclude=config.exclude)
    out.start({"run": str(base.path), "budget": budget})
    shape = tuple(base.config["model"]["input_shape"])
    todo = cell_plan(config)

    def compute(key: str) -> dict[str, Any]:
        return {
            **_cell(base.model, todo[key], config, calib, data, device, shape),
            "budget": budget,
        }

    baseline = out.run_cells(
        ["baseline"],
        lambda k: {
            **_evaluate(base.model, data, config.loss),
            **size_metrics(base.model, shape),
            "kind": "baseline",
            "seconds": 0.0,
        },
        log,
    )
    cells = out.run_cells(list(todo), compute, log)
    payload = {
        "kind": "compare",
        "run": str(base.path),
        "config": config.to_dict(),
        "budget": budget,
        "baseline": baseline["baseline"],
        "summary": summarize(cells.values()),
        "cells": list(cells.values()),
    }
    return _write(stamp(payload, config.seed), Path(out_dir))


def _write(payload: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``compare.json``, the plots and ``summary.md`` (each written atomically)."""
    from .compare_plots import markdown, plot_compare

    write_json(out_dir / "compare.json", payload)
    payload["plots"] = [str(p) for p in plot_compare(payload, out_dir)]
    write_text(out_dir / "summary.md", markdown(payload))
    return payload


def _cell(base_model, cell, config: CompareConfig, calib, data, device, shape) -> dict[str, Any]:
    """One cell on a fresh copy of the trained model: compress, evaluate, measure the size."""
    start = time.perf_counter()
    model = copy.deepcopy(base_model).to(device)
    if cell["kind"] == "prune":
        info = _prune_cell(model, cell, config, calib, data, device)
    else:
        info = _quant_cell(model, cell, config, data)
    return {
        **cell,
        **info,
        **_evaluate(model, data, config.loss),
        **size_metrics(model.cpu(), shape),
        "seconds": round(time.perf_counter() - start, 3),
    }


def cell_plan(config: CompareConfig) -> dict[str, dict[str, Any]]:
    """``{key: cell description}`` for every cell, in run order."""
    cells: dict[str, dict[str, Any]] = {}
    for seed in range(config.seeds):
        for crit in config.criteria:
            for s in config.sparsities:
                key = f"prune-{crit}-s{s:g}-seed{seed}"
                cells[key] = {
                    "kind": "prune",
                    "method": crit,
                    "sparsity": float(s),
                    "seed_index": seed,
                }
        for spec in config.quantizers:
            key = f"quant-{spec.replace(':', '-b')}-seed{seed}"
            cells[key] = {"kind": "quantize", "method": spec, "seed_index": seed}
    return cells


def _prune_cell(model, cell, config: CompareConfig, calib, data, device) -> dict[str, Any]:
    """Prune to the cell's sparsity (one shot or ``rounds`` iterative steps), fine-tuning the
    same budget after each round. Calibration samples and criterion seed are shared by all
    cells; the ``random`` criterion and the fine-tuning shuffle take the cell's seed."""
    from ..pruning import PruneConfig, prune
    from ..pruning.iterative import finetune_round
    from ..pruning.schedules import plan

    seed = config.seed + cell["seed_index"]
    options = dict(config.criterion_options.get(cell["method"], {}))
    if cell["method"] == "random":
        options["seed"] = seed
    cfg = PruneConfig(
        criterion=cell["method"],
        criterion_options=options,
        amount=cell["sparsity"],
        scheme=config.scheme,
        samples=len(calib),
        seed=config.seed,
        finetune_lr=config.finetune_lr,
        finetune_epochs=config.finetune_epochs,
        layers=config.layers,
        exclude=config.exclude,
    )
    rounds = 1 if config.schedule == "oneshot" else config.rounds
    targets = plan(config.schedule, cell["sparsity"], rounds, 0.0, "geometric")
    damage, records = 0.0, []
    for r, target in enumerate(targets, 1):
        result = prune(
            model,
            cfg.replace(amount=float(target), finetune_epochs=0),
            calib,
            loss=config.loss,
            device=device,
            progress=False,
        )
        if result.predicted_damage is not None:
            damage += result.predicted_damage
        rec = {"round": r, "target": float(target), "sparsity": result.total_sparsity}
        if config.finetune_epochs:
            rec["accuracy_before_finetune"] = _evaluate(model, data, config.loss)["accuracy"]
            finetune_round(
                model,
                data,
                cfg.replace(seed=seed),
                r,
                loss=config.loss,
                device=device,
                progress=False,
            )
        records.append(rec)
    return {
        "total_sparsity": result.total_sparsity,
        "predicted_damage": damage,
        "rounds": records,
        "prune_seed": config.seed,
        "seed": seed,
    }


def _quant_cell(model, cell, config: CompareConfig, data) -> dict[str, Any]:
    from ..quantization import quantize

    seed = config.seed + cell["seed_index"]
    qcfg = quant_config(
        cell["method"],
        seed=seed,
        finetune_epochs=config.finetune_epochs,
        finetune_lr=config.finetune_lr,
        samples=config.samples,
    )
    result = quantize(model, qcfg, data)
    return {"bits_per_weight": result.storage["total"]["bits_per_weight"], "seed": seed}


def _evaluate(model, data, loss: str | None = None) -> dict[str, Any]:
    from ..training import evaluate

    ev = evaluate(model, data, split="test", loss=loss)
    metric, value = quality(ev)  # "accuracy" holds the run's quality metric, named in "metric"
    return {"accuracy": value, "metric": metric, "loss": ev["loss"], "errors": ev.get("errors")}


def summarize(cells) -> list[dict[str, Any]]:
    """One row per (kind, method, sparsity): accuracy and compression over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["kind"], c["method"], c.get("sparsity")), []).append(c)
    rows = []
    for (kind, method, sparsity), members in groups.items():
        acc = mean_std(c["accuracy"] for c in members)
        rows.append(
            {
                "kind": kind,
                "method": method,
                "sparsity": sparsity,
                "accuracy": acc,
                "compression_ratio": mean_std(c["compression_ratio"] for c in members),
                "params_ratio": mean_std(c["params_ratio"] for c in members),
                "weight_sparsity": mean_std(c["weight_sparsity"] for c in members),
                "seconds": mean_std(c["seconds"] for c in members),
            }
        )
    return rows
