"""Per-layer pruning sensitivity (Han, Pool, Tran & Dally 2015, Fig. 6) and a suggested
per-layer sparsity for an accuracy budget.

For each prunable layer ``l`` and each sparsity ``s`` of the grid, only ``l`` is pruned to
``s`` (by ``criterion``, one shot, no fine-tuning) and accuracy is measured on the
*validation* split (the suggestion is a choice, so it is not made on the test set). The
suggestion for layer ``l`` is the largest ``s`` whose drop ``acc_0 - acc_l(s)`` stays within
``max_drop``; pruning all layers at once loses more than any one alone, so the combined
model is measured too and reported next to the suggestion. The suggestion file is what
``brainsurgeon prune --layer-sparsity FILE`` reads: ``{"layer_sparsity": {"fc1.weight": 0.9}}``.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import write_json, write_text
from ..config import Config
from ..data.core import DataBundle
from ..errors import ConfigError, check_fraction, check_positive_int
from ..runs import Run
from ..utils import resolve_device
from .common import ExperimentDir, Log, open_base, quality, stamp

SUGGESTION_FILE = "layer_sparsity.json"
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


@dataclass(frozen=True)
class SensitivityConfig(Config):
    """``sparsities``: the grid; ``max_drop``: allowed validation-accuracy drop per layer
    (a fraction: 0.005 = half a percentage point); ``samples``: calibration samples;
    ``layers`` / ``exclude``: glob patterns choosing the layers; ``loss``: a registered loss
    name (None: cross entropy)."""

    criterion: str = "magnitude"
    sparsities: tuple[float, ...] = GRID
    max_drop: float = 0.005
    samples: int = 1000
    seed: int = 0
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    loss: str | None = None

    def __post_init__(self) -> None:
        from ..losses import LOSSES
        from ..pruning import CRITERIA

        CRITERIA.get(self.criterion)
        if self.loss is not None:
            LOSSES.get(self.loss)
        if not self.sparsities:
            raise ConfigError("sparsities: the list is empty; e.g. --sparsities 0.5,0.8,0.9")
        for s in self.sparsities:
            check_fraction("sparsities", s)
        if not 0.0 <= self.max_drop < 1.0:
            raise ConfigError(
                f"max_drop must lie in [0, 1) (a fraction of accuracy), got "
                f"{self.max_drop}; e.g. 0.005 for half a point"
            )
        check_positive_int("samples", self.samples)


def sensitivity(
    run: str | os.PathLike | Run,
    config: SensitivityConfig,
    out_dir: str | os.PathLike,
    *,
    data: DataBundle | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """Measure the curves, write ``sensitivity.json``, ``layer_sparsity.json`` and a plot."""
    from ..models.adapters import compressible
    from ..training.evaluation import recorded_loss

    base = open_base(run)
    if config.loss is None:  # the run's own task loss (an embedding model's: cosine)
        config = config.replace(loss=recorded_loss(base.config))
    out = ExperimentDir(out_dir, "sensitivity", config.to_dict(), force=force)
    device = resolve_device(device)
    data = data if data is not None else base.data(progress=False)
    calib = data.train.subset(config.samples, seed=config.seed)
    layers = list(compressible(base.model, layers=config.layers, exclude=config.exclude))
    baseline = _evaluate(base.model, data, config.loss)  # a bad loss is refused before OUT
    out.start({"run": str(base.path)})

    def compute(key: str) -> dict[str, Any]:
        layer, s = key.rsplit("@", 1)
        return _layer_cell(base.model, config, layers, layer, float(s), calib, data, device)

    keys = [f"{layer}@{s:g}" for layer in layers for s in sorted(config.sparsities)]
    cells = out.run_cells(keys, compute, log)
    curves = {
        layer: [cells[f"{layer}@{s:g}"] for s in sorted(config.sparsities)] for layer in layers
    }
    suggested = suggest(curves, baseline["accuracy"], config.max_drop)
    combined = None
    if any(v > 0 for v in suggested.values()):
        model = _pruned(base.model, config, suggested, calib, device)
        combined = _evaluate(model, data, config.loss)
    payload = stamp(
        {
            "kind": "sensitivity",
            "run": str(base.path),
            "config": config.to_dict(),
            "split": "val",
            "baseline": baseline,
            "curves": curves,
            "suggested": {"layer_sparsity": suggested},
            "combined": combined,
        },
        config.seed,
    )
    root = Path(out_dir)
    write_json(root / "sensitivity.json", payload)
    write_json(root / SUGGESTION_FILE, {"layer_sparsity": suggested})
    payload["plots"] = [str(_plot(payload, root))]
    write_text(root / "summary.md", markdown(payload))
    return payload


def _layer_cell(model, config, layers, layer: str, s: float, calib, data, device):
    """Prune only ``layer`` to ``s`` (a copy of ``model``) and measure the accuracy."""
    start = time.perf_counter()
    pruned = _pruned(model, config, {n: (s if n == layer else 0.0) for n in layers}, calib, device)
    return {
        "layer": layer,
        "sparsity": s,
        **_evaluate(pruned, data, config.loss),
        "seconds": round(time.perf_counter() - start, 3),
    }


def suggest(
    curves: dict[str, list[dict[str, Any]]], base_acc: float, max_drop: float
) -> dict[str, float]:
    """Per layer, the largest grid sparsity whose accuracy drop is within ``max_drop``
    (0.0 when even the smallest one loses more). Pure function of the curves."""
    out = {}
    for layer, points in curves.items():
        ok = [p["sparsity"] for p in points if base_acc - p["accuracy"] <= max_drop + 1e-12]
        out[layer] = max(ok) if ok else 0.0
    return out


def _pruned(model, config: SensitivityConfig, layer_sparsity: dict[str, float], calib, device):
    from ..pruning import PruneConfig, prune

    model = copy.deepcopy(model).to(device)
    if all(v == 0 for v in layer_sparsity.values()):
        return model
    cfg = PruneConfig(
        criterion=config.criterion,
        scheme="per-layer",
        amount=0.5,
        layer_sparsity=layer_sparsity,
        samples=len(calib),
        seed=config.seed,
        layers=config.layers,
        exclude=config.exclude,
    )
    prune(model, cfg, calib, loss=config.loss, device=device, progress=False)
    return model


def _evaluate(model, data, loss: str | None = None) -> dict[str, Any]:
    from ..training import evaluate

    ev = evaluate(model, data, split="val", loss=loss)
    metric, value = quality(ev)  # "accuracy" holds the run's quality metric, named in "metric"
    return {"accuracy": value, "metric": metric, "loss": ev["loss"]}


def _plot(payload: dict[str, Any], root: Path) -> Path:
    from ..reports.plots import line_plot

    series = {
        layer: {
            "x": [p["sparsity"] for p in pts],
            "mean": [p["accuracy"] for p in pts],
            "std": None,
        }
        for layer, pts in payload["curves"].items()
    }
    return line_plot(
        root / "sensitivity.png",
        series,
        xlabel="sparsity of this layer only",
        ylabel="validation accuracy",
        title=f"Per-layer sensitivity ({payload['config']['criterion']}, no fine-tuning)",
        reference=payload["baseline"]["accuracy"],
    )


def markdown(payload: dict[str, Any]) -> str:
    base = payload["baseline"]["accuracy"]
    drop = payload["config"]["max_drop"]
    lines = [
        f"# Per-layer sensitivity ({payload['config']['criterion']})",
        "",
        f"run `{payload['run']}`; validation accuracy unpruned {100 * base:.2f}%; "
        f"budget: at most {100 * drop:.2f} points lost per layer.",
        "",
        "| layer | suggested sparsity | accuracy at it % |",
        "|---|---|---|",
    ]
    for layer, s in payload["suggested"]["layer_sparsity"].items():
        acc = next((p["accuracy"] for p in payload["curves"][layer] if p["sparsity"] == s), base)
        lines.append(f"| {layer} | {s:g} | {100 * acc:.2f} |")
    if payload["combined"] is not None:
        lines += [
            "",
            f"All layers pruned together at the suggestion (no fine-tuning): "
            f"{100 * payload['combined']['accuracy']:.2f}% validation accuracy.",
        ]
    return "\n".join(lines) + "\n"
