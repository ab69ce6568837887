"""``factorize(model, config, data)``: choose per-layer ranks, then swap layers for SVD factors.

Four ways to choose the rank ``k`` of each layer (exactly one per config):

* ``energy``: the smallest ``k`` keeping ``sum_{i<k} s_i^2 >= energy * sum s_i^2``;
* ``rank``: the same ``k`` everywhere;
* ``ratio``: the largest ``k`` whose rate ``m n / (k (m + n + 1))`` reaches ``ratio``;
* ``budget``: keep ``budget`` of the selected layers' weights (counted as ``k (m + n + 1)`` per
  factored layer), reached greedily: each step lowers the rank of the layer whose next step
  costs the least measured validation accuracy (then loss; the loss alone for a regression
  or custom ``loss``) per weight saved.

Candidates are the adapter's compressible layers (:mod:`brainsurgeon.models.adapters`) of a
type with a low-rank form (Linear, Conv2d). A Linear whose parent reads its weight directly
instead of calling it (``nn.MultiheadAttention.out_proj``; ``linear1`` / ``linear2`` of an
``nn.TransformerEncoderLayer``, whose fused inference path reads them) cannot be replaced: it
is left dense with that reason, and naming it in ``layers`` is an error.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import Config
from ..data.core import DataLike, as_dataset
from ..errors import ConfigError, UnsupportedLayerError, check_fraction, check_positive_int
from ..losses import LossLike
from ..models.adapters import compressible_layers, layer_kind
from ..training import evaluate
from ..utils import resolve_device
from .layers import (
    FACTORED,
    factored_layer,
    functional_children,
    handler,
    layer_matrix,
    replace_layer,
    set_submodule,
)
from .svd import (
    SVD,
    check_rank,
    compression_rate,
    max_shrinking_rank,
    rank_for_energy,
    rank_for_rate,
)

MODES = ("energy", "rank", "ratio", "budget")


@dataclass(frozen=True)
class FactorizeConfig(Config):
    """Options of :func:`factorize`; set exactly one of ``energy``, ``rank``, ``ratio``, ``budget``.

    ``layers``: names or glob patterns to factorize (default: every Linear/Conv2d the option
    can shrink; a layer it cannot shrink is left dense and reported); ``exclude``: globs of
    layers left dense. ``eval_samples``: validation samples
    used to measure sensitivity in budget mode.
    """

    energy: float | None = None
    rank: int | None = None
    ratio: float | None = None
    budget: float | None = None
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    eval_samples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        chosen = [m for m in MODES if getattr(self, m) is not None]
        if len(chosen) != 1:
            raise ConfigError(
                f"choose exactly one of energy, rank, ratio, budget; got "
                f"{', '.join(chosen) or 'none'} (e.g. energy=0.95 or rank=32)"
            )
        if self.energy is not None:
            check_fraction("energy", self.energy, closed_high=True)
        if self.rank is not None:
            check_positive_int("rank", self.rank)
        if self.ratio is not None and not self.ratio > 1:
            raise ConfigError(
                f"ratio must be > 1 (a compression rate), got {self.ratio}; "
                "e.g. ratio=4 keeps about a quarter of each layer's weights"
            )
        if self.budget is not None:
            check_fraction("budget", self.budget)
        check_positive_int("eval_samples", self.eval_samples)
        if self.layers is not None and not self.layers:
            raise ConfigError("layers is empty; name at least one layer or leave it unset")

    @property
    def mode(self) -> str:
        return next(m for m in MODES if getattr(self, m) is not None)


@dataclass
class LayerPlan:
    """One layer's decision: ``rank`` 0 means left dense (``reason`` says why)."""

    name: str
    kind: str
    m: int
    n: int
    rank: int = 0
    energy: float = 1.0
    reason: str = ""

    @property
    def rate(self) -> float:
        return compression_rate(self.m, self.n, self.rank) if self.rank else 1.0

    @property
    def weights_before(self) -> int:
        return self.m * self.n

    @property
    def weights_after(self) -> int:
        return self.rank * (self.m + self.n) if self.rank else self.m * self.n

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "full_rank": min(self.m, self.n),
            "rate": self.rate,
            "weights_before": self.weights_before,
            "weights_after": self.weights_after,
        }


@dataclass
class FactorizeResult:
    """The edited model and one :class:`LayerPlan` per considered layer."""

    model: nn.Module
    layers: list[LayerPlan]
    config: FactorizeConfig
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def factorized(self) -> list[str]:
        """Names of the layers replaced by factor pairs (empty: the model is unchanged)."""
        return [p.name for p in self.layers if p.rank]

    @property
    def note(self) -> str:
        """A sentence for the user when nothing was factorized, else ``""``."""
        if self.factorized:
            return ""
        mode = self.config.mode
        return (
            f"nothing factorized: no layer shrinks with {mode}={getattr(self.config, mode)} "
            "(each one needs a rank whose factors hold at least as many weights as the "
            "layer); the model is unchanged. Lower --energy, or set --rank / --ratio"
        )

    def to_dict(self) -> dict[str, Any]:
        before = sum(p.weights_before for p in self.layers)
        after = sum(p.weights_after for p in self.layers)
        out = {
            "config": self.config.to_dict(),
            "layers": [p.to_dict() for p in self.layers],
            "factorized": self.factorized,
            "weights_before": before,
            "weights_after": after,
            "weight_ratio": before / max(after, 1),
            **self.extra,
        }
        if self.note:
            out["note"] = self.note
        return out


def factorize(
    model: nn.Module,
    config: FactorizeConfig,
    data: DataLike | None = None,
    *,
    loss: LossLike = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> FactorizeResult:
    """Replace layers of ``model`` (in place) by truncated-SVD factor pairs; see the module doc.

    Every rank is chosen and validated before the model is touched, so a bad option leaves
    the model as it was. ``data`` (its validation split) is needed only for ``budget``, which
    measures it with ``loss`` (a name, a callable ``(output, target) -> scalar`` or None:
    from the targets) on ``device`` (default: where the model is). With ``energy``, a model
    in which no layer would shrink is left unchanged and ``result.note`` says so.
    ``callback(record)`` runs after each layer is replaced (``progress``: a bar over them).
    """
    if device is not None:
        model.to(resolve_device(device))
    plans, svds = plan(model, config, data, loss=loss)
    chosen = [p for p in plans if p.rank]
    for p in tqdm(chosen, desc="factorize", disable=not progress, leave=False, unit="layer"):
        replace_layer(model, p.name, svds[p.name], p.rank)
        if callback is not None:
            callback({"layer": p.name, "rank": p.rank})
    return FactorizeResult(model=model, layers=plans, config=config)


def plan(
    model: nn.Module,
    config: FactorizeConfig,
    data: DataLike | None = None,
    *,
    loss: LossLike = None,
) -> tuple[list[LayerPlan], dict[str, SVD]]:
    """Per-layer ranks (nothing modified) and the SVD of each considered layer."""
    layers, refused = _select(model, _expand(model, config.layers))
    layers = [(n, m) for n, m in layers if not _matches(n, config.exclude)]
    svds = {name: SVD.of(layer_matrix(name, layer)) for name, layer in layers}
    plans = [
        LayerPlan(name, layer_kind(layer), *layer_matrix(name, layer).shape)
        for name, layer in layers
    ]
    if config.mode == "budget":
        ranks = _budget_ranks(model, plans, svds, config, data, loss)
    else:
        ranks = {p.name: _rank(p, svds[p.name], config) for p in plans}
    for p in plans:
        rank = ranks[p.name]
        if isinstance(rank, str):
            p.reason = rank
        else:
            p.rank, p.energy = rank, svds[p.name].energy(rank) if rank else 1.0
    if not plans:
        raise ConfigError(
            f"{type(model).__name__} has no layer that can be factorized; factorization "
            f"replaces {', '.join(c.__name__ for c in FACTORED)} layers"
            + (f" ({'; '.join(f'{n}: {r}' for n, r in refused.items())})" if refused else "")
        )
    if not any(p.rank for p in plans) and config.mode != "energy":
        reasons = "; ".join(f"{p.name}: {p.reason}" for p in plans)
        raise ConfigError(
            f"nothing to factorize with {config.mode}={getattr(config, config.mode)} ({reasons})"
        )
    plans += [_refused_plan(model, name, reason) for name, reason in refused.items()]
    return plans, svds


def _refused_plan(model: nn.Module, name: str, reason: str) -> LayerPlan:
    layer = model.get_submodule(name)
    return LayerPlan(name, layer_kind(layer), *layer.weight.shape, reason=f"left dense: {reason}")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _expand(model: nn.Module, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``names`` with each glob pattern replaced by the module names it matches."""
    if names is None:
        return None
    modules = [n for n, m in model.named_modules() if n and handler(m) is not None]
    out: list[str] = []
    for name in names:
        if any(c in name for c in "*?["):
            hits = [n for n in modules if fnmatch.fnmatchcase(n, name)]
            if not hits:
                raise ConfigError(f"no layer matches {name!r}; layers: {', '.join(modules)}")
            out += [n for n in hits if n not in out]
        elif name not in out:
            out.append(name)
    return tuple(out)


def _select(
    model: nn.Module, names: tuple[str, ...] | None
) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """``(layers to consider, {layer: why it cannot be replaced})`` for ``names`` (None: all)."""
    refused = functional_children(model)
    try:
        known = compressible_layers(model)
    except UnsupportedLayerError:
        known = []
    supported = [(n, m) for n, m in known if n and handler(m) is not None]
    if names is None:
        return [(n, m) for n, m in supported if n not in refused], {
            n: r for n, r in refused.items() if any(n == s for s, _ in supported)
        }
    valid = dict(model.named_modules())
    out = []
    for name in names:
        if name not in valid or not name:
            choices = [n for n, _ in supported if n not in refused]
            raise ConfigError(
                f"no layer named {name!r}; layers that can be factorized: "
                f"{', '.join(choices) or '(none)'}"
            )
        if name in refused:
            raise ConfigError(f"cannot factorize {name}: {refused[name]}; leave it out of --layers")
        layer_matrix(name, valid[name])  # raises UnsupportedLayerError for other types
        out.append((name, valid[name]))
    return out, {}


def _rank(p: LayerPlan, svd: SVD, config: FactorizeConfig) -> int | str:
    """The rank for ``p`` (an int) or, where the option cannot shrink it, the reason (a str).

    A rank or ratio the user aimed at named layers is an error rather than a skip.
    """
    strict = config.layers is not None and config.mode in ("rank", "ratio")
    try:
        if config.mode == "energy":
            k = rank_for_energy(svd.S, config.energy)
        elif config.mode == "rank":
            k = config.rank
        else:
            k = rank_for_rate(p.m, p.n, config.ratio)
            if k < 1:
                raise ConfigError(
                    f"ratio {config.ratio} is out of reach for {p.name} ({p.m} x {p.n}): rank 1 "
                    f"gives rate {compression_rate(p.m, p.n, 1):.2f}; choose a smaller ratio"
                )
        check_rank(p.name, p.m, p.n, k)
        return k
    except ConfigError as err:
        if strict:
            raise
        return f"left dense: {err}"


def _rank_grid(m: int, n: int) -> list[int]:
    """Candidate ranks, descending geometrically (x0.75) from the largest shrinking rank to 1."""
    top, grid = max_shrinking_rank(m, n), []
    k = float(top)
    while top and (not grid or grid[-1] > 1):
        r = max(1, round(k))
        if not grid or r < grid[-1]:
            grid.append(r)
        k *= 0.75
    return grid


def _cost(p: LayerPlan, rank: int) -> int:
    return rank * (p.m + p.n + 1) if rank else p.m * p.n


def _damage(base: dict[str, Any], ev: dict[str, Any], saved: int) -> tuple[float, ...]:
    """Sort key of one step: accuracy lost (classification only), loss gained, per weight."""
    lost = max(base.get("accuracy", 0.0) - ev.get("accuracy", 0.0), 0.0)
    return lost / saved, max(ev["loss"] - base["loss"], 0.0) / saved, -saved


def _budget_ranks(model, plans, svds, config, data, loss) -> dict[str, int | str]:
    """Greedy allocation: lower, step by step, the rank whose step hurts validation least."""
    if data is None:
        raise ConfigError(
            "budget mode measures accuracy sensitivity and needs data; pass "
            "data= (its validation split is used)"
        )
    subset = as_dataset(data, "val").subset(config.eval_samples, seed=config.seed)
    grids = {p.name: _rank_grid(p.m, p.n) for p in plans}
    target = config.budget * sum(p.m * p.n for p in plans)
    floor = sum(_cost(p, grids[p.name][-1] if grids[p.name] else 0) for p in plans)
    if floor > target:
        raise ConfigError(
            f"budget {config.budget} asks for <= {int(target):,} weights but rank 1 "
            f"everywhere still needs {floor:,}; choose a larger budget"
        )
    originals = dict(model.named_modules())
    work = copy.deepcopy(model)
    ranks = {p.name: 0 for p in plans}
    base = evaluate(work, subset, loss=loss)
    while sum(_cost(p, ranks[p.name]) for p in plans) > target:
        best = None
        for p in plans:
            grid, k = grids[p.name], ranks[p.name]
            step = grid.index(k) + 1 if k else 0
            if step >= len(grid):
                continue
            current = work.get_submodule(p.name)
            trial = factored_layer(p.name, originals[p.name], svds[p.name], grid[step])
            set_submodule(work, p.name, trial)
            ev = evaluate(work, subset, loss=loss)
            set_submodule(work, p.name, current)
            saved = _cost(p, k) - _cost(p, grid[step])
            key = _damage(base, ev, saved)
            if best is None or key < best[0]:
                best = (key, p.name, grid[step], trial, ev)
        _, name, k, trial, base = best
        set_submodule(work, name, trial)
        ranks[name] = k
    return {
        name: k if k else "left dense: the budget was met without it" for name, k in ranks.items()
    }
