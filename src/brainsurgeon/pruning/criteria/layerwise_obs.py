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

import torch
from torch import Tensor

from ...curvature import LayerInputStats, collect
from ...curvature.context import finish, weights
from ...curvature.early_stop import forward_batches
from ...curvature.layer_inputs import from_matrix, hooks_visible, input_owner, weight_matrix
from ...curvature.layers import functional_model
from ...errors import ConfigError, UnsupportedLayerError, check_fraction, check_positive_int
from ...models.adapters import layout_of
from ...solvers import damped_inverse_cholesky, layer_obs_update, obc_prune, sparsegpt
from ...utils import preserved_modes
from .base import SaliencyContext, Solver, register_criterion

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
    the pruned layers before it)."""

    needs_data = True
    loss_scale = False

    def __init__(
        self,
        method: str = "auto",
        block_size: int = 128,
        damp: float = 0.01,
        sequential: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(
                f"layerwise-obs method must be one of {list(METHODS)}, got {method!r}"
            )
        if not float(damp) >= 0:
            raise ConfigError(f"layerwise-obs damp must be >= 0 (e.g. 0.01), got {damp!r}")
        self.method, self.damp, self.sequential = method, float(damp), bool(sequential)
        self.block_size = check_positive_int("block_size", block_size)

    def _check(self, ctx: SaliencyContext) -> None:
        for name, (module, tensor_name) in ctx.targets.items():
            owner = input_owner(ctx.model, module)
            LayerInputStats(module, name, tensor=tensor_name, owner=owner)  # rule or refusal
            if layout_of(module, tensor_name).in_axis is None:
                raise UnsupportedLayerError(
                    f"layerwise-obs reconstructs layer outputs through their weights; {name} "
                    "is not a weight: exclude biases (include_bias=False) or use criterion 'obs'"
                )

    def input_hessians(self, ctx: SaliencyContext, names, model=None) -> dict[str, Tensor]:
        """``{name: H = 2 X X^T / N}`` of the listed layers' inputs over ``ctx.data``, run
        through ``model`` (default ``ctx.model``; a copy holding already solved layers)."""
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
            if len(names) == 1:  # sequential: stop each pass after the one listened-to layer
                with hooks_visible(), preserved_modes(model, "eval"):
                    owner = stats[names[0]].owner
                    forward_batches(model, owner, data, ctx.batch_size, ctx.device)
                return {n: s.hessian() for n, s in stats.items()}
            with hooks_visible():
                collect(
                    _Forward(model),
                    model,
                    data,
                    batch_size=ctx.batch_size,
                    device=ctx.device,
                    progress=ctx.progress,
                    desc=self.name,
                )
        finally:
            for s in stats.values():
                s.detach()
        return {n: s.hessian() for n, s in stats.items()}

    def statistics(self, ctx: SaliencyContext) -> dict[str, Tensor]:
        """Every target layer's input Hessian on the unpruned model (one calibration pass)."""
        self._check(ctx)
        return self.input_hessians(ctx, list(ctx.targets))

    def score(self, ctx: SaliencyContext, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        hessians, w = stats, weights(ctx)
        out = {}
        for name, H in hessians.items():
            module, tensor = ctx.targets[name]
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
        out = {}
        for name, H in hessians.items():
            module, tensor = ctx.targets[name]
            k = keep[name] & ctx.masks[name] if name in ctx.masks else keep[name]
            W2 = weight_matrix(module, tensor, w[name])
            new = layer_obs_update(W2, H, weight_matrix(module, tensor, k), damp=self.damp)
            out[name] = from_matrix(module, tensor, new, w[name].shape)
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
        if self.sequential:
            hessians = {}
        else:
            hessians = stats if stats is not None else self.input_hessians(ctx, names)
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
            H = self.input_hessians(ctx, [name], work)[name] if work is not None else hessians[name]
            module, tensor = ctx.targets[name]
            W2, k2 = weight_matrix(module, tensor, w), weight_matrix(module, tensor, keep[name])
            W_new, k_new = self._solve(W2, H, amounts[name], nm, k2)
            new[name] = from_matrix(module, tensor, W_new, w.shape)
            keep[name] = from_matrix(module, tensor, k_new, w.shape)
            if work is not None:  # later layers calibrate on this layer's pruned outputs
                with torch.no_grad():
                    getattr(_same_modules(ctx, work)[name], ctx.targets[name][1]).copy_(new[name])
        return keep, new

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
        rows, cols = W.shape
        use_obc = self.method == "obc" or (
            self.method == "auto" and rows * float(cols) ** 3 <= OBC_MAX_COST
        )
        if use_obc:
            return obc_prune(W, H, sparsity, nm, damp=self.damp, keep=keep)
        return sparsegpt(W, H, sparsity, nm, block_size=self.block_size, damp=self.damp, keep=keep)
