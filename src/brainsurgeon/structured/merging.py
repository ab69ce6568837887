"""Neuron merging: remove units of a layer and fold what they computed into the units kept.

For a producer layer ``h = f(W x + b)`` (``W``: n x d, ``b``: n, ``f`` positively homogeneous,
e.g. ReLU) read by a consumer ``y = W_next h`` (``W_next``: n_next x n), plain removal of a unit
drops its column of ``W_next``; merging rewrites the kept columns so that the consumer still
receives (an approximation of) the removed unit's contribution. Write ``a_j = [w_j, b_j]`` for
unit j's incoming weights with its bias (a row of ``[W | b]``, length d + 1).

* **Scaling-matrix merge** (Kim, Lee, Kim & Kim, "Neuron Merging: Compensating for Pruned
  Neurons", NeurIPS 2020): keep the units ``K`` with the largest row norms (or any scores) and
  approximate every row as ``a_j ~ z_j a_{k(j)}``, with ``k(j)`` the kept row of largest cosine
  similarity and ``z_j = ||a_j|| / ||a_{k(j)}||`` when that similarity exceeds ``threshold``
  (else ``z_j = 0``: plain removal). So ``[W | b] ~ Z^T Y`` with ``Y = [W | b][K]`` and ``Z``
  (|K| x n) holding 1 at (k, k) and ``z_j`` at (k(j), j). Since ``f(z t) = z f(t)`` for
  ``z >= 0``, ``h ~ Z^T f(Y x)`` and the consumer becomes ``W_next_new = W_next Z^T``
  (n_next x |K|). The bias is part of the matched vector, so the merge is exact when
  ``w_j = c w_k`` and ``b_j = c b_k`` for some ``c > 0``; otherwise unit j's bias is replaced
  by ``z_j b_k`` (the paper's approximation for layers with bias).
* **Data-free merge** (Srinivas & Babu, "Data-free parameter pruning for deep neural
  networks", BMVC 2015): removing unit j and adding its outgoing column to unit i's
  (``W_next[:, i] += W_next[:, j]``) changes the consumer by ``W_next[:, j] (f(a_i . x) -
  f(a_j . x))``, bounded in expectation by the saliency ``s_ij = ||W_next[:, j]||^2 ||a_i -
  a_j||^2``. Greedily merge the pair of least saliency, update the saliencies of the unit that
  absorbed it, and repeat until the budget is met. Identical units merge exactly.

The model-level :func:`merge` and :func:`prune_units` rebuild both Linear layers of each group
smaller (new ``nn.Linear`` modules with the kept rows / columns) and report the kept units.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, check_fraction
from .chains import check_homogeneous, linear_chain_groups, linear_pair, rebuild_pair
from .groups import Group

CRITERIA = ("l2", "l1")
Criterion = str | Mapping[str, torch.Tensor]


def augmented(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``[W | b]`` (n x (d + 1)), or ``W`` (n x d) without a bias."""
    return weight if bias is None else torch.cat([weight, bias[:, None]], dim=1)


def unit_scores(weight: torch.Tensor, criterion: str = "l2") -> torch.Tensor:
    """Importance of each unit (n,): the L2 (Kim et al.'s criterion) or L1 norm of its row."""
    if criterion not in CRITERIA:
        raise ConfigError(
            f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}, or a mapping "
            "from group name to a score tensor of shape (units,)"
        )
    return weight.norm(p=2 if criterion == "l2" else 1, dim=1)


def top_units(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """The ``n_keep`` highest-scoring unit indices, in increasing order (long, (n_keep,))."""
    return scores.topk(n_keep).indices.sort().values


def kim_merge(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    next_weight: torch.Tensor,
    keep: torch.Tensor,
    *,
    threshold: float = 0.45,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kim et al.'s scaling-matrix merge of one layer (see the module docstring).

    ``weight`` (n x d), ``bias`` (n,) or None, ``next_weight`` (n_next x n), ``keep`` (|K|,)
    kept unit indices. Returns ``(W_next Z^T, Z)``: the consumer weight (n_next x |K|) and the
    scaling matrix Z (|K| x n, non-negative). A removed unit whose best cosine similarity to a
    kept unit is ``<= threshold`` has a zero column in Z (it is simply removed).
    """
    rows = augmented(weight, bias).to(torch.float64)
    norms = rows.norm(dim=1)
    unit = rows / norms.clamp_min(torch.finfo(rows.dtype).tiny)[:, None]
    cosine = unit @ unit[keep].T  # (n, |K|)
    best, match = cosine.max(dim=1)
    scale = norms / norms[keep][match].clamp_min(torch.finfo(rows.dtype).tiny)
    scale = torch.where(best > threshold, scale, torch.zeros_like(scale))
    z = torch.zeros(len(keep), len(norms), dtype=rows.dtype, device=rows.device)
    z[match, torch.arange(len(norms), device=rows.device)] = scale
    z[:, keep] = torch.eye(len(keep), dtype=rows.dtype, device=rows.device)
    new_next = (next_weight.to(torch.float64) @ z.T).to(next_weight.dtype)
    return new_next, z.to(weight.dtype)


def data_free_merge(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    next_weight: torch.Tensor,
    n_remove: int,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Srinivas & Babu's greedy pair merge of one layer (see the module docstring).

    ``weight`` (n x d), ``bias`` (n,) or None, ``next_weight`` (n_next x n). Removes
    ``n_remove`` units. The saliency matrix ``S[i, j] = ||W_next[:, j]||^2 ||a_i - a_j||^2``
    (remove j into i) is built once, vectorised; after each merge only column i changes (its
    outgoing weights grew) and row / column j are retired. Returns ``(keep, W_next_new,
    pairs)``: kept indices (|K|,), the consumer weight (n_next x |K|) and the ``(i, j)`` merges
    in order.
    """
    rows = augmented(weight, bias).to(torch.float64)
    n = rows.shape[0]
    dist = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist").square()
    out = next_weight.to(torch.float64).clone()
    sal = dist * out.square().sum(dim=0)[None, :]
    sal.fill_diagonal_(math.inf)
    alive = torch.ones(n, dtype=torch.bool, device=rows.device)
    pairs = []
    for _ in range(n_remove):
        i, j = divmod(int(sal.argmin()), n)
        out[:, i] += out[:, j]
        alive[j] = False
        sal[j, :] = math.inf
        sal[:, j] = math.inf
        sal[:, i] = torch.where(alive, dist[:, i] * out[:, i].square().sum(), math.inf)
        sal[i, i] = math.inf
        pairs.append((i, j))
    keep = alive.nonzero().flatten()
    return keep, out[:, keep].to(next_weight.dtype), pairs


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge` / :func:`prune_units` did.

    ``model``: the smaller model. ``kept``: group name -> kept unit indices (sorted, long).
    ``merged``: group name -> how many removed units were folded into kept ones (0 for plain
    removal). ``method``: ``"kim"``, ``"data-free"`` or ``"prune"``.
    """

    model: nn.Module
    kept: dict[str, torch.Tensor]
    merged: dict[str, int]
    method: str
    amount: float


def _n_remove(group: Group, amount: float) -> int:
    n_remove = round(amount * group.units)
    if n_remove >= group.units:
        raise ConfigError(
            f"amount={amount} would remove all {group.units} units of {group.name}; keep at "
            f"least one (amount < {(group.units - 0.5) / group.units:.4g})"
        )
    return n_remove


def _scores(criterion: Criterion, group: Group, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(criterion, str):
        return unit_scores(weight, criterion)
    if group.name not in criterion:
        raise ConfigError(
            f"criterion mapping has no scores for group {group.name!r}; it has {sorted(criterion)}"
        )
    scores = torch.as_tensor(criterion[group.name]).to(weight.device)
    if scores.shape != (group.units,):
        raise ConfigError(
            f"scores for {group.name} have shape {tuple(scores.shape)}; expected "
            f"({group.units},), one per unit"
        )
    return scores


def _run(
    model: nn.Module,
    amount: float,
    groups: Sequence[Group] | None,
    inplace: bool,
    solve: Callable[[Group, torch.Tensor, torch.Tensor | None, torch.Tensor, int], tuple],
    homogeneous: bool,
) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, int]]:
    amount = check_fraction("amount", amount, closed_high=True)
    model = model if inplace else copy.deepcopy(model)
    groups = linear_chain_groups(model) if groups is None else list(groups)
    pairs = [linear_pair(model, g) for g in groups]
    plan = [_n_remove(g, amount) for g in groups]
    if homogeneous:
        for producer, consumer in pairs:
            check_homogeneous(model, producer, consumer)
    kept, merged = {}, {}
    with torch.no_grad():
        for group, (producer, consumer), n_remove in zip(groups, pairs, plan, strict=True):
            p, c = model.get_submodule(producer), model.get_submodule(consumer)
            keep, new_next, n_merged = solve(group, p.weight, p.bias, c.weight, n_remove)
            rebuild_pair(model, producer, consumer, keep, new_next)
            kept[group.name], merged[group.name] = keep, n_merged
    return model, kept, merged


def merge(
    model: nn.Module,
    amount: float,
    *,
    method: str = "kim",
    groups: Sequence[Group] | None = None,
    criterion: Criterion = "l2",
    threshold: float = 0.45,
    inplace: bool = False,
) -> MergeResult:
    """Remove ``round(amount * units)`` units of every group, compensating by merging.

    ``method``: ``"kim"`` (scaling matrix; kept units chosen by ``criterion``: ``"l2"``,
    ``"l1"`` or a mapping group name -> scores (units,), the highest kept; ``threshold`` is
    the cosine similarity a removed unit needs to be merged) or ``"data-free"`` (greedy pair
    merge; chooses its own units, so ``criterion`` must stay ``"l2"``). ``groups``: neuron
    groups of Linear pairs (default :func:`linear_chain_groups`), processed in order, each on
    the weights left by the previous. Returns a :class:`MergeResult`; the input model is
    untouched unless ``inplace``.
    """
    if method not in ("kim", "data-free"):
        raise ConfigError(f"unknown merge method {method!r}; valid: kim, data-free")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(
            f"threshold is a cosine similarity in [0, 1], got {threshold}; Kim et al. use "
            "0.45 for LeNet-300-100 (negative similarities would need z < 0, wrong for ReLU)"
        )
    if method == "data-free" and criterion != "l2":
        raise ConfigError(
            "data-free merging picks the units to remove by its own saliency; drop "
            "criterion= or use method='kim'"
        )

    def solve(group, weight, bias, next_weight, n_remove):
        if method == "data-free":
            keep, new_next, pairs = data_free_merge(weight, bias, next_weight, n_remove)
            return keep, new_next, len(pairs)
        keep = top_units(_scores(criterion, group, weight), group.units - n_remove)
        new_next, z = kim_merge(weight, bias, next_weight, keep, threshold=threshold)
        removed = torch.ones(group.units, dtype=torch.bool, device=z.device)
        removed[keep] = False
        return keep, new_next, int((z[:, removed] > 0).any(dim=0).sum())

    model, kept, merged = _run(model, amount, groups, inplace, solve, homogeneous=True)
    return MergeResult(model, kept, merged, method, amount)


def prune_units(
    model: nn.Module,
    amount: float,
    *,
    groups: Sequence[Group] | None = None,
    criterion: Criterion = "l2",
    inplace: bool = False,
) -> MergeResult:
    """The baseline: remove the same units as ``merge(method="kim")`` with no compensation
    (the consumer's columns of removed units are dropped). Works for any activation."""

    def solve(group, weight, bias, next_weight, n_remove):
        keep = top_units(_scores(criterion, group, weight), group.units - n_remove)
        return keep, next_weight[:, keep], 0

    model, kept, merged = _run(model, amount, groups, inplace, solve, homogeneous=False)
    return MergeResult(model, kept, merged, "prune", amount)
