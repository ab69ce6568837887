"""``layerwise-obs``: prune each layer to reproduce its own outputs on calibration inputs.

Per layer, minimise ``||W X - W' X||^2`` with ``H = 2 X X^T / N`` of the layer's inputs
(:class:`brainsurgeon.curvature.LayerInputStats`); the solvers live in
:mod:`brainsurgeon.solvers`: exact OBC (Frantar & Alistarh 2022) for small layers,
SparseGPT (Frantar & Alistarh 2023; 128-column blocks, Cholesky of ``H^-1``, damping 1% of
``mean(diag H)``) for large ones; unstructured or N:M. ``prune`` returns keep-masks and the
reconstructed weights; with ``sequential=True`` each layer is calibrated on the outputs of
the already pruned layers before it (as SparseGPT does). Scores (``w^2 / (2 [H^-1]_qq)``) are
in units of a layer's reconstruction error, so they rank within a layer, not across layers.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ... import distributed as parallel
from ...curvature import LayerInputStats
from ...curvature.blockwise import CALIBRATIONS, Calibrator, Step, batch_for, plan
from ...curvature.context import finish, weights
from ...curvature.layer_inputs import from_matrix, hooks_visible, input_owner, weight_matrix
from ...curvature.layers import functional_model
from ...distributed import layers
from ...errors import ConfigError, UnsupportedLayerError, check_fraction, check_positive_int
from ...models.adapters import layout_of
from ...solvers import damped_inverse_cholesky, layer_obs_update, obc_prune, sparsegpt
from ...utils import check_finite, numerical_step
from .base import SaliencyContext, Solver, register_criterion

DAMP_FIX = "raise the damping (damp=0.1, or --criterion-options obs:damp=0.1) or check the data"

METHODS = ("auto", "obc", "sparsegpt")
OBC_MAX_COST = 2e9  # rows * cols^3 above which method="auto" switches to SparseGPT


class _Forward:
    """An accumulator-shaped forward pass (for ``collect``): the hooks do the work."""

    def __init__(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor) -> None:
        self.model(x)


def _same_modules(ctx: SaliencyContext, model) -> dict[str, torch.nn.Module]:
    """Each target's layer inside ``model`` (``ctx.model`` itself or a copy of it)."""
    paths = {id(m): path for path, m in ctx.model.named_modules()}
    return {n: model.get_submodule(paths[id(m)]) for n, (m, _) in ctx.targets.items()}


@register_criterion("layerwise-obs", "per-layer OBS on ||WX - W'X||^2: exact OBC or SparseGPT")
class LayerwiseOBS(Solver):
    """Options: ``method`` (auto | obc | sparsegpt), ``block_size`` (SparseGPT columns per
    block), ``damp`` (fraction of ``mean(diag H)``), ``sequential`` (calibrate each layer on
    the pruned layers before it), ``calibration`` (sequential only: ``blockwise`` runs the
    model's chain of blocks one at a time on stored activations, ``whole`` re-runs a copy
    of the whole model per layer, ``auto``: blockwise where a chain is found),
    ``offload`` (blockwise: stored activations on the CPU between uses)."""

    needs_data = True
    loss_scale = False

    def __init__(
        self,
        method: str = "auto",
        block_size: int = 128,
        damp: float = 0.01,
        sequential: bool = True,
        calibration: str = "auto",
        offload: bool = False,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(
                f"layerwise-obs method must be one of {list(METHODS)}, got {method!r}"
            )
        if not float(damp) >= 0:
            raise ConfigError(f"layerwise-obs damp must be >= 0 (e.g. 0.01), got {damp!r}")
        self.method, self.damp, self.sequential = method, float(damp), bool(sequential)
        self.block_size = check_positive_int("block_size", block_size)
        if calibration not in CALIBRATIONS:
            raise ConfigError(
                f"layerwise-obs calibration must be one of {list(CALIBRATIONS)}, "
                f"got {calibration!r}"
            )
        self.calibration, self.offload = calibration, bool(offload)
        self.calibrated_: str | None = None  # "blockwise" or "whole (<why>)" after solve

    def _check(self, ctx: SaliencyContext) -> None:
        for name, (module, tensor_name) in ctx.targets.items():
            owner = input_owner(ctx.model, module)
            LayerInputStats(module, name, tensor=tensor_name, owner=owner)  # rule or refusal
            if layout_of(module, tensor_name).in_axis is None:
                raise UnsupportedLayerError(
                    f"layerwise-obs reconstructs layer outputs through their weights; {name} "
                    "is not a weight: exclude biases (include_bias=False) or use criterion 'obs'"
                )

    def input_hessians(
        self, ctx: SaliencyContext, names, model=None, owners: dict[str, int] | None = None
    ) -> dict[str, Tensor]:
        """``{name: H = 2 X X^T / N}`` of the listed layers' inputs over ``ctx.data``, run
        through ``model`` (default ``ctx.model``; a copy holding already solved layers).

        Under ``torch.distributed`` each rank runs its share of the data and the statistics
        are summed over the ranks; with ``owners`` ({name: rank}) only to each layer's
        owner, and the other ranks get no ``H`` for it."""
        data = ctx.require_data(self.name)
        model = ctx.model if model is None else model
        modules = _same_modules(ctx, model)
        stats = {
            n: LayerInputStats(
                modules[n], n, tensor=ctx.targets[n][1], owner=input_owner(model, modules[n])
            ).attach()
            for n in names
        }
        try:
            with hooks_visible():
                parallel.collect(
                    _Forward(model),
                    model,
                    data,
                    batch_size=ctx.batch_size,
                    device=ctx.device,
                    progress=ctx.progress,
                    desc=self.name,
                    reduce_result=False,
                )
        finally:
            for s in stats.values():
                s.detach()
        owners = owners or {}
        for n, s in stats.items():
            parallel.reduce(s, dst=owners.get(n))
        return {n: s.hessian() for n, s in stats.items() if layers.mine(owners, n)}

    def statistics(self, ctx: SaliencyContext) -> dict[str, Tensor]:
        """Every target layer's input Hessian on the unpruned model (one calibration pass)."""
        self._check(ctx)
        return self.input_hessians(ctx, list(ctx.targets))

    def score(self, ctx: SaliencyContext, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        hessians, w = stats, weights(ctx)
        out = {}
        for name, H in hessians.items():
            module, tensor = ctx.targets[name]
            with numerical_step(f"the inverse layer Hessian of {name}", DAMP_FIX):
                U, _ = damped_inverse_cholesky(H.to(torch.float64), self.damp)
            diag = U.pow(2).sum(0).to(w[name].dtype)
            s = weight_matrix(module, tensor, w[name]).pow(2) / (2 * diag)
            out[name] = from_matrix(module, tensor, s, w[name].shape)
        return finish(out, ctx)

    def compensate(
        self, ctx: SaliencyContext, keep: dict[str, Tensor], *, stats=None
    ) -> dict[str, Tensor]:
        """Refit the kept weights of every layer to its outputs: ``layer_obs_update``."""
        hessians = self.statistics(ctx) if stats is None else stats
        w = weights(ctx)
        owners = self._owners(ctx, list(hessians)) if parallel.active() else {}
        out = {}
        for name, H in hessians.items():
            out[name] = w[name].clone()
            if not layers.mine(owners, name):  # solved by its owner, broadcast below
                continue
            module, tensor = ctx.targets[name]
            k = keep[name] & ctx.masks[name] if name in ctx.masks else keep[name]
            W2 = weight_matrix(module, tensor, w[name])
            with numerical_step(f"the layer-wise OBS update of {name}", DAMP_FIX):
                new = layer_obs_update(W2, H, weight_matrix(module, tensor, k), damp=self.damp)
                check_finite(name, new, "the OBS update", DAMP_FIX)
            out[name] = from_matrix(module, tensor, new, w[name].shape).to(w[name].dtype)
        layers.share(out, owners, "the refitted weights")
        return out

    def solve(
        self,
        ctx: SaliencyContext,
        sparsity: dict[str, float] | float,
        nm: tuple[int, int] | None = None,
        *,
        stats: dict[str, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Solve every layer: ``(keep_masks, new_weights)``, nothing written to the model.

        ``sequential``: each layer's Hessian is re-collected on the outputs of the layers
        solved before it (``stats`` is not used); otherwise ``stats`` (or one pass)."""
        self._check(ctx)
        amounts = self._amounts(ctx, sparsity, nm)
        names = [n for n in ctx.targets if n in amounts]
        owners = self._owners(ctx, names) if parallel.active() else {}
        if self.sequential and self.calibration != "whole":
            chain = plan(ctx.model, self._steps(ctx, names), ctx.require_data(self.name),
                         ctx.device)  # fmt: skip
            if not isinstance(chain, str):
                self.calibrated_ = "blockwise"
                return self._solve_blockwise(ctx, chain, amounts, nm, owners)
            if self.calibration == "blockwise":
                raise ConfigError(f"layerwise-obs calibration='blockwise': {chain}; use 'auto'")
            self.calibrated_ = f"whole ({chain})"
            warnings.warn(
                f"layerwise-obs: calibrating on the whole model, once per layer ({chain})",
                stacklevel=2,
            )
        elif self.sequential:
            self.calibrated_ = "whole"
        if self.sequential:
            hessians = {}
        elif stats is not None:
            hessians = stats
        else:
            hessians = self.input_hessians(ctx, names, owners=owners)
        work = functional_model(ctx.model, always_copy=True) if self.sequential else None
        keep, new = {}, {}
        for name in ctx.targets:
            w = ctx.tensor(name).detach()
            mask = ctx.masks.get(name)
            keep[name] = (
                mask.clone().bool() if mask is not None else torch.ones_like(w, dtype=torch.bool)
            )
            new[name] = w.clone()
            if name not in amounts:
                continue
            if work is not None:
                hessians = self.input_hessians(ctx, [name], work, owners=owners)
            if layers.mine(owners, name):
                module, tensor = ctx.targets[name]
                W2, k2 = weight_matrix(module, tensor, w), weight_matrix(module, tensor, keep[name])
                with numerical_step(f"the layer-wise solve of {name}", DAMP_FIX):
                    W_new, k_new = self._solve(W2, hessians[name], amounts[name], nm, k2)
                    check_finite(name, W_new, "the solve", DAMP_FIX)
                new[name] = from_matrix(module, tensor, W_new, w.shape).to(w.dtype)
                keep[name] = from_matrix(module, tensor, k_new, w.shape)
            if work is not None:  # the owner's result, then later layers calibrate on it
                layers.share({name: new[name]}, owners, "the solved weights")
                layers.share({name: keep[name]}, owners, "the solved mask")
                with torch.no_grad():
                    getattr(_same_modules(ctx, work)[name], ctx.targets[name][1]).copy_(new[name])
        if work is None:  # every layer solved by its owner: share the results
            layers.share({n: new[n] for n in amounts}, owners, "the solved weights")
            layers.share({n: keep[n] for n in amounts}, owners, "the solved mask")
        return keep, new

    @staticmethod
    def _steps(ctx: SaliencyContext, names) -> list[Step]:
        return [Step(n, *ctx.targets[n]) for n in names]

    @staticmethod
    def _start(ctx: SaliencyContext, name: str) -> tuple[Tensor, Tensor]:
        """``(keep, weight)`` of ``name`` before its solve: its current mask (or all ones)
        and a copy of its effective tensor."""
        w = ctx.tensor(name).detach()
        mask = ctx.masks.get(name)
        keep = mask.clone().bool() if mask is not None else torch.ones_like(w, dtype=torch.bool)
        return keep, w.clone()

    def _solve_blockwise(self, ctx, chain, amounts, nm, owners):
        """The sequential solve, block by block (:mod:`brainsurgeon.curvature.blockwise`).
        A solved layer's copies are made when it is solved, not all up front."""
        keep, new = {}, {}
        for name in ctx.targets:
            if name not in amounts:
                keep[name], new[name] = self._start(ctx, name)

        def solve(step: Step, H: Tensor | None) -> Tensor:
            name = step.name
            module, tensor = ctx.targets[name]
            w = ctx.tensor(name).detach()
            k0 = ctx.masks.get(name)
            k0 = k0.bool() if k0 is not None else torch.ones_like(w, dtype=torch.bool)
            if layers.mine(owners, name):  # solved where H is (the working device)
                W2, k2 = weight_matrix(module, tensor, w), weight_matrix(module, tensor, k0)
                with numerical_step(f"the layer-wise solve of {name}", DAMP_FIX):
                    W_new, k_new = self._solve(
                        W2.to(H.device), H, amounts[name], nm, k2.to(H.device)
                    )
                    check_finite(name, W_new, "the solve", DAMP_FIX)
                new[name] = from_matrix(module, tensor, W_new, w.shape).to(w)
                keep[name] = from_matrix(module, tensor, k_new, w.shape).to(w.device)
            else:  # buffers for the owner's broadcast
                keep[name], new[name] = self._start(ctx, name)
            layers.share({name: new[name]}, owners, "the solved weights")
            layers.share({name: keep[name]}, owners, "the solved mask")
            return new[name]

        data, steps = (
            ctx.require_data(self.name),
            self._steps(ctx, [n for n in ctx.targets if n in amounts]),
        )
        bs = batch_for(chain, steps, len(data), ctx.batch_size, "layerwise-obs calibration")
        calib = Calibrator(ctx.model, chain, data, solve, batch_size=bs, device=ctx.device,
                           owners=owners, offload=self.offload)  # fmt: skip
        calib.run(steps)
        return {n: keep[n] for n in ctx.targets}, {n: new[n] for n in ctx.targets}

    def _owners(self, ctx, names) -> dict[str, int]:
        """Each solved layer's rank, balanced by the cost of its solve."""
        costs = {}
        for n in names:
            module, tensor = ctx.targets[n]
            rows, cols = weight_matrix(module, tensor, ctx.tensor(n).detach()).shape
            costs[n] = layers.solve_cost(rows, cols, exact=self._uses_obc(rows, cols))
        return layers.assign(costs)

    def _uses_obc(self, rows: int, cols: int) -> bool:
        return self.method == "obc" or (
            self.method == "auto" and rows * float(cols) ** 3 <= OBC_MAX_COST
        )

    def _amounts(self, ctx, sparsity, nm) -> dict[str, float | None]:
        if nm is not None:
            return {n: None for n in ctx.targets}
        if isinstance(sparsity, dict):
            unknown = sorted(set(sparsity) - set(ctx.targets))
            if unknown:
                raise ConfigError(
                    f"sparsity given for {unknown}, which are not targets; "
                    f"targets: {list(ctx.targets)}"
                )
            return {n: check_fraction(f"sparsity of {n}", s) for n, s in sparsity.items() if s}
        s = check_fraction("sparsity", sparsity)
        return {n: s for n in ctx.targets}

    def _solve(self, W: Tensor, H: Tensor, sparsity, nm, keep):
        if self._uses_obc(*W.shape):
            return obc_prune(W, H, sparsity, nm, damp=self.damp, keep=keep)
        return sparsegpt(W, H, sparsity, nm, block_size=self.block_size, damp=self.damp, keep=keep)
