"""How far to trust each saliency estimate: compare it with the measured true damage.

For ``weights`` entries drawn uniformly (seeded) from the unpruned eligible weights, measure
``L(w_q = 0) - L(w)`` on the calibration samples, then for each criterion report the Spearman
and Kendall rank correlations between its scores and the measured damage on the *same*
entries, and, for criteria whose scores are a predicted loss increase (``loss_scale``), the
mean absolute error of that prediction. ``magnitude`` and ``random`` are rank-only.
``spearman_low_half`` repeats Spearman on the entries whose true damage is below the median:
the ones a pruner actually removes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from ..data.core import DataLike, as_dataset
from ..errors import ConfigError
from ..losses import LossLike, resolve_loss
from ..models.adapters import compressible
from ..utils import preserved_modes, resolve_device
from .criteria import Criterion, SaliencyContext, make_criterion
from .damage import measure_damage, sample_entries
from .step import make_context


def saliency_check(
    model: nn.Module,
    criteria: Sequence[str] | Mapping[str, Criterion],
    data: DataLike,
    weights: int = 2000,
    seed: int = 0,
    *,
    samples: int = 1000,
    device: str | torch.device = "auto",
    options: dict[str, dict[str, Any]] | None = None,
    loss: LossLike = None,
    layers: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``criteria`` against measured damage; returns ``{"criteria": [row, ...], ...}``.

    Each row: ``criterion``, ``spearman``, ``kendall``, ``spearman_low_half``, ``mae`` (None
    for rank-only criteria), ``mean_predicted``, ``loss_scale``, ``seconds``. ``options``:
    per-criterion options, e.g. ``{"obd": {"hessian": "ggn"}}``. ``criteria`` may also map
    labels to built criteria (``{"obd ggn": make_criterion("obd", hessian="ggn"), ...}``) to
    compare variants of one criterion against a single measurement. ``loss``: the loss whose
    increase is measured and predicted (a name or ``(output, target) -> scalar``);
    ``layers`` / ``exclude``: glob patterns choosing the sampled tensors.
    """
    built = _check(criteria, data, weights, options)
    targets = compressible(model, layers=layers, exclude=exclude)
    device = resolve_device(device)
    model.to(device)
    with preserved_modes(model, "eval"):
        calib = as_dataset(data, "train").subset(samples, seed=seed)
        ctx = make_context(
            model,
            targets,
            calib,
            loss_fn=resolve_loss(loss),
            batch_size=256,
            seed=seed,
            device=device,
            progress=progress,
        )
        idx = sample_entries(ctx, int(weights), seed=seed)
        start = time.perf_counter()
        true = measure_damage(ctx, idx, desc="true damage")
        truth = torch.cat([true[n] for n in idx]).numpy()
        true_seconds = time.perf_counter() - start
        rows = [_row(name, crit, ctx, idx, truth) for name, crit in built.items()]
    return {
        "weights": int(truth.size),
        "samples": len(ctx.data),
        "seed": seed,
        "true_damage": {**_summary(truth), "seconds": round(true_seconds, 3)},
        "criteria": rows,
    }


def _summary(truth: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(truth.mean()),
        "median": float(np.median(truth)),
        "min": float(truth.min()),
        "max": float(truth.max()),
        "negative_fraction": float((truth < 0).mean()),
    }


def _check(criteria, data, weights, options) -> dict[str, Criterion]:
    """Every argument checked before any work; the built criteria by label."""
    if not criteria:
        raise ConfigError("saliency-check needs at least one criterion, e.g. obd,magnitude")
    if data is None:
        raise ConfigError("saliency-check needs data to measure the true damage; pass data=...")
    built = _build(criteria, options or {})
    if isinstance(weights, bool) or int(weights) < 3:
        raise ConfigError(f"weights must be an integer >= 3 (sampled weights), got {weights!r}")
    return built


def _build(criteria, options) -> dict[str, Criterion]:
    if isinstance(criteria, Mapping):
        if options:
            raise ConfigError("pass options either inside built criteria or by name, not both")
        return dict(criteria)
    unknown = sorted(set(options) - set(criteria))
    if unknown:
        raise ConfigError(
            f"options given for {unknown}, which are not among the criteria "
            f"{list(criteria)}; add them to the list or drop the options"
        )
    return {name: make_criterion(name, **options.get(name, {})) for name in criteria}


def _row(name: str, crit, ctx: SaliencyContext, idx, truth: np.ndarray) -> dict[str, Any]:
    start = time.perf_counter()
    scores = crit.scores(ctx)
    seconds = time.perf_counter() - start
    pred = torch.cat([scores[n].detach().reshape(-1).cpu()[i] for n, i in idx.items()])
    pred = pred.double().numpy()
    finite = np.isfinite(pred)
    low = truth <= np.median(truth)
    return {
        "criterion": name,
        "options": crit.options(),
        "spearman": _corr(stats.spearmanr, pred[finite], truth[finite]),
        "kendall": _corr(stats.kendalltau, pred[finite], truth[finite]),
        "spearman_low_half": _corr(stats.spearmanr, pred[finite & low], truth[finite & low]),
        "mae": float(np.abs(pred[finite] - truth[finite]).mean()) if crit.loss_scale else None,
        "mean_predicted": float(pred[finite].mean()) if crit.loss_scale else None,
        "loss_scale": bool(crit.loss_scale),
        "finite": int(finite.sum()),
        "seconds": round(seconds, 3),
    }


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float | None:
    """A rank correlation, or None where it is undefined (constant input, < 3 points)."""
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    value = float(fn(a, b).statistic)
    return value if math.isfinite(value) else None
