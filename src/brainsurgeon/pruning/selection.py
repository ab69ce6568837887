"""Selection: turn saliency scores into keep-masks that hit the requested sparsity exactly.

Schemes (See, Luong & Manning 2016, "Compression of NMT models via pruning"):

* ``global`` (class-blind): one ranking over every eligible tensor, prune the lowest ``k``;
* ``per-layer`` (class-uniform): prune the same fraction inside each tensor (or the
  fraction ``layer_sparsity[name]`` given per tensor, e.g. from a sensitivity analysis);
* ``class-distribution``: prune ``score < lam * sigma_c`` in each class ``c`` (a tensor),
  one ``lam`` for all; ``lam`` is solved so the total hits the amount;
* ``threshold``: prune ``score < threshold`` (the sparsity follows from the threshold);
* ``nm``: in each group of ``M`` consecutive weights along the input dimension keep the
  ``N`` best (sparsity ``1 - N/M``).

"Exactly" means ``round(amount * n)`` entries are pruned, ``n`` counting the entries of all
eligible tensors. Already pruned entries (``masks``) are pruned first, so masks only shrink.
Ties are broken deterministically: by tensor order (as given), then by flat index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, NumericalError, check_fraction
from ..registry import Registry

Scores = Mapping[str, torch.Tensor]
Keep = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Request:
    """What a pruning step asks a selector for: the target ``amount`` (overall fraction),
    already pruned ``masks``, per-tensor ``layer_sparsity``, the ``threshold``, ``nm`` and
    ``lam`` parameters of their schemes, and the per-tensor ``sigma`` for class-distribution
    (None: the spread of the scores)."""

    amount: float = 0.5
    masks: Mapping[str, torch.Tensor] = field(default_factory=dict)
    layer_sparsity: Mapping[str, float] | None = None
    threshold: float | None = None
    nm: tuple[int, int] = (2, 4)
    lam: float | None = None
    sigma: Mapping[str, float] | None = None


Selector = Callable[[Scores, Request], tuple[Keep, dict[str, Any]]]
#: scheme name -> ``selector(scores, request) -> (keep, info)``; a pruning step dispatches here.
SELECTORS: Registry[Selector] = Registry("selection scheme")


def _prepared(scores: Scores, masks: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Scores as float64 with already pruned entries at -inf; NaN is refused."""
    out = {}
    for name, s in scores.items():
        s = s.detach().to(torch.float64)
        if torch.isnan(s).any():
            raise NumericalError(
                f"scores of {name} contain NaN; the criterion's statistics broke down "
                "(check the loss on the calibration data, or use another criterion)"
            )
        mask = (masks or {}).get(name)
        if mask is not None:
            s = s.masked_fill(~mask.to(device=s.device, dtype=torch.bool), float("-inf"))
        out[name] = s
    return out


def lowest_k(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean vector marking the ``k`` lowest entries (stable: ties go to the lower index)."""
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.sort(flat, stable=True).indices
        chosen[order[:k]] = True
    return chosen


def _split(flat_prune: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Keep:
    keep, start = {}, 0
    for name, s in like.items():
        n = s.numel()
        keep[name] = ~flat_prune[start : start + n].view(s.shape)
        start += n
    return keep


def select_global(scores: Scores, amount: float, *, masks=None) -> Keep:
    """Prune the ``round(amount * n)`` lowest scores over all tensors together."""
    check_fraction("amount", amount)
    s = _prepared(scores, masks)
    flat = torch.cat([v.reshape(-1).cpu() for v in s.values()])
    k = int(round(amount * flat.numel()))
    return _to_devices(_split(lowest_k(flat, k), s), scores)


def select_per_layer(
    scores: Scores, amount: float, *, masks=None, layer_sparsity: Mapping[str, float] | None = None
) -> Keep:
    """Prune ``round(a_t * n_t)`` lowest scores in each tensor ``t`` (``a_t`` = ``amount`` or
    ``layer_sparsity[t]``). The total is exact per tensor, hence overall up to rounding."""
    s = _prepared(scores, masks)
    keep = {}
    for name, v in s.items():
        a = (layer_sparsity or {}).get(name, amount)
        if a == 0:
            keep[name] = ~torch.isneginf(v)
            continue
        check_fraction(f"sparsity of {name}", a)
        k = int(round(a * v.numel()))
        keep[name] = ~lowest_k(v.reshape(-1).cpu(), k).view(v.shape)
    return _to_devices(keep, scores)


def select_class_distribution(
    scores: Scores,
    amount: float,
    *,
    masks=None,
    sigma: Mapping[str, float] | None = None,
    lam: float | None = None,
) -> tuple[Keep, float]:
    """Prune ``score_q < lam * sigma_c`` in every class (tensor) ``c``; returns ``(keep, lam)``.

    ``sigma``: the spread of each class (See et al.: the standard deviation of the layer's
    weights); default: the standard deviation of the class's scores. With ``lam`` given, the
    sparsity follows from it. Otherwise ``lam`` is solved for ``amount``: the rule ranks the
    ratio ``score / sigma_c`` globally, so the exact ``lam`` is the ``k``-th smallest ratio
    (the limit a bisection on ``lam`` converges to, without its tolerance); the reported
    ``lam`` lies midway between the ``k``-th and ``k+1``-th ratios.
    """
    s = _prepared(scores, masks)
    sig = {n: float(sigma[n]) if sigma else _finite_std(v) for n, v in s.items()}
    bad = [n for n, v in sig.items() if not v > 0]
    if bad:
        raise ConfigError(
            f"class-distribution needs a positive spread per tensor; {bad} have "
            "sigma 0 (constant tensor); use the 'global' or 'per-layer' scheme"
        )
    ratio = {n: v / sig[n] for n, v in s.items()}
    flat = torch.cat([v.reshape(-1).cpu() for v in ratio.values()])
    if lam is not None:
        return _to_devices(_split(flat < lam, ratio), scores), float(lam)
    check_fraction("amount", amount)
    k = int(round(amount * flat.numel()))
    chosen = lowest_k(flat, k)
    srt = torch.sort(flat).values
    edges = [float(srt[i]) for i in (k - 1, k) if 0 <= i < srt.numel()]
    edges = [e for e in edges if abs(e) != float("inf")] or [0.0]
    return _to_devices(_split(chosen, ratio), scores), sum(edges) / len(edges)


def select_threshold(scores: Scores, threshold: float, *, masks=None) -> Keep:
    """Prune ``score < threshold`` (and everything already pruned)."""
    s = _prepared(scores, masks)
    return _to_devices({n: ~(v < threshold) for n, v in s.items()}, scores)


def select_nm(scores: Scores, n: int, m: int, *, masks=None) -> Keep:
    """In each group of ``m`` consecutive entries along the input dimension keep the ``n`` best.

    Linear ``(out, in)``: groups along ``in``. Conv ``(out, in, *k)``: groups along ``in`` at
    each kernel position (the layout of NVIDIA's 2:4 sparse tensor cores). 1-D tensors
    (biases) are grouped along their only dimension. ``in`` must be a multiple of ``m``.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ConfigError(f"N:M needs integers 0 < N < M, got {n}:{m}; e.g. 2:4")
    s = _prepared(scores, masks)
    keep = {}
    for name, v in s.items():
        moved = v.unsqueeze(0) if v.dim() == 1 else v.movedim(1, -1)
        if moved.shape[-1] % m:
            raise ConfigError(
                f"{name} has {moved.shape[-1]} inputs, not a multiple of M={m}; "
                f"choose M dividing it or exclude the layer"
            )
        groups = moved.reshape(-1, m).cpu()
        order = torch.sort(groups, dim=1, stable=True).indices
        prune = torch.zeros_like(groups, dtype=torch.bool)
        prune.scatter_(1, order[:, : m - n], True)
        prune = prune.view(moved.shape)
        prune = prune.squeeze(0) if v.dim() == 1 else prune.movedim(-1, 1)
        keep[name] = ~prune
    return _to_devices(keep, scores)


@SELECTORS.register("global", "class-blind: one ranking over all eligible tensors")
def _global(scores: Scores, req: Request) -> tuple[Keep, dict[str, Any]]:
    return select_global(scores, req.amount, masks=req.masks), {}


@SELECTORS.register("per-layer", "class-uniform: the same fraction pruned inside each tensor")
def _per_layer(scores: Scores, req: Request) -> tuple[Keep, dict[str, Any]]:
    keep = select_per_layer(scores, req.amount, masks=req.masks, layer_sparsity=req.layer_sparsity)
    return keep, {}


@SELECTORS.register("class-distribution", "prune score < lam * sigma per tensor, one lam for all")
def _class_distribution(scores: Scores, req: Request) -> tuple[Keep, dict[str, Any]]:
    keep, lam = select_class_distribution(
        scores, req.amount, masks=req.masks, sigma=req.sigma, lam=req.lam
    )
    return keep, {"lam": lam}


@SELECTORS.register("threshold", "prune every entry whose score is below an absolute threshold")
def _threshold(scores: Scores, req: Request) -> tuple[Keep, dict[str, Any]]:
    if req.threshold is None:
        raise ConfigError("scheme 'threshold' needs threshold=T (prune scores below T)")
    return select_threshold(scores, req.threshold, masks=req.masks), {}


@SELECTORS.register("nm", "N:M: keep the N best of every M consecutive input weights")
def _nm(scores: Scores, req: Request) -> tuple[Keep, dict[str, Any]]:
    n, m = req.nm
    return select_nm(scores, n, m, masks=req.masks), {}


def _finite_std(v: torch.Tensor) -> float:
    finite = v[torch.isfinite(v)]
    return float(finite.std()) if finite.numel() > 1 else 0.0


def _to_devices(keep: Keep, like: Scores) -> Keep:
    return {n: k.to(like[n].device) for n, k in keep.items()}


def sparsity(keep: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction pruned per tensor."""
    return {n: 1.0 - float(k.sum()) / max(k.numel(), 1) for n, k in keep.items()}


def total_sparsity(keep: Mapping[str, torch.Tensor]) -> float:
    """Fraction pruned over all tensors together."""
    total = sum(k.numel() for k in keep.values())
    kept = sum(int(k.sum()) for k in keep.values())
    return 1.0 - kept / max(total, 1)
