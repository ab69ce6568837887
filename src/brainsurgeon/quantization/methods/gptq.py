"""Second-order quantization (OBQ / GPTQ; Frantar & Alistarh 2022, Frantar et al. 2023).

The layer-wise OBS solver with ``quant(w)`` in place of 0: columns of ``W (rows, cols)`` are
quantized one at a time and the error of each is spread over the not-yet-quantized columns
through the inverse of ``H = 2 X X^T / N`` (``X``: the layer's inputs on calibration data).
Tensors are processed in order, each seeing the inputs of the already-quantized ones before
it. The result lies on the same per-channel uniform grid as round-to-nearest, so it is
stored as a :class:`UniformQuant` over the solved weights.

``X`` is collected by forward hooks through the layer-input rules of
:mod:`brainsurgeon.curvature.layer_inputs`: Linear, ungrouped Conv2d, single-layer LSTM/GRU,
self-attention ``in_proj_weight`` and ``MultiheadAttention.out_proj`` (from the recomputed
context). An embedding's inputs are one-hot, so its ``H`` is diagonal and GPTQ equals
round-to-nearest, which is what it gets. Tensors whose inputs no rule can collect (a
2-layer LSTM, cross-attention, grouped convs) are refused by default, naming them, before
anything changes; ``unhooked="rtn"`` rounds them to nearest instead and the result lists them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ... import distributed as parallel
from ...curvature.blockwise import CALIBRATIONS, Calibrator, Step, batch_for, plan
from ...curvature.layer_inputs import INPUT_RULES, LayerInputStats, hooks_visible, input_owner
from ...data.core import DataLike, Dataset, as_dataset
from ...distributed import layers as owned
from ...errors import ConfigError, UnsupportedLayerError, check_positive_int
from ...models.adapters import layer_kind, layout_of
from ...state import original
from ...utils import numerical_step, preserved_modes
from ..base import as_matrix
from ..config import GridOptions, one_of
from ..registry import LayerPlan, Quantizer, attach, register_quantizer
from .uniform import UniformQuant, fake_quantize, fit_grid

GPTQ_FIX = "raise --damp (e.g. 0.1) or give more --samples"

UNHOOKED = ("error", "rtn")


@dataclass(frozen=True)
class GPTQConfig(GridOptions):
    """GPTQ on the uniform grid, 2..8 bits (default 4).

    ``samples``: calibration samples; ``damp``: ``H + damp * mean(diag H) I``; ``unhooked``:
    what to do with tensors whose layer inputs a hook cannot see ("error" | "rtn");
    ``sequential``: calibrate each tensor on the already quantized ones before it (as the
    GPTQ paper does; False: every ``H`` from one pass over the unquantized model);
    ``calibration`` (sequential): ``blockwise`` runs the model's chain of blocks one at a
    time on stored activations (:mod:`brainsurgeon.curvature.blockwise`), ``whole`` runs
    the whole model once per tensor, ``auto`` blockwise where a chain is found;
    ``act_order``: fix each tensor's columns in order of decreasing ``H_jj`` (AutoGPTQ's
    desc_act; helps models with outlier input features).
    """

    METHOD: ClassVar[str] = "gptq"
    BITS: ClassVar[tuple[int, int]] = (2, 8)
    DEFAULT_BITS: ClassVar[int] = 4

    samples: int = 1024
    damp: float = 0.01
    unhooked: str = "error"
    sequential: bool = True
    calibration: str = "auto"
    act_order: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("samples", self.samples)
        one_of("calibration", self.calibration, CALIBRATIONS)
        if not 0.0 <= self.damp < 1.0:
            raise ConfigError(f"damp must lie in [0, 1), got {self.damp}; e.g. damp=0.01")
        one_of("unhooked", self.unhooked, UNHOOKED)


def solver():
    """The pure GPTQ solver ``gptq(W, H, quant, damp=, keep=) -> W_q``."""
    from ...solvers import gptq

    return gptq


def _stats(model: nn.Module, layer: LayerPlan) -> LayerInputStats:
    owner = input_owner(model, layer.module)
    return LayerInputStats(
        layer.module, layer.name, torch.float64, tensor=layer.tensor, owner=owner
    )


@torch.no_grad()
def input_hessian(
    model: nn.Module, layer: LayerPlan, calib: Dataset, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """``H = 2 X X^T / N`` (float64, ``(cols, cols)``) of the tensor's inputs over ``calib``.

    Under ``torch.distributed`` each rank runs its share of ``calib`` and the sums are
    reduced over the ranks (every rank gets ``H`` and solves the same, deterministically).
    """
    stats = _stats(model, layer).attach()
    try:
        with preserved_modes(model, "eval"), hooks_visible():
            for x, _ in parallel.shard(calib, batch_size).batches(batch_size, device=device):
                model(x)
    finally:
        stats.detach()
    return parallel.reduce(stats).hessian()


@torch.no_grad()
def input_hessians(
    model: nn.Module,
    layers: list[LayerPlan],
    calib: Dataset,
    device,
    batch_size: int = 256,
    owners: dict[str, int] | None = None,
) -> dict[int, torch.Tensor]:
    """``{id(layer): H}`` of every listed tensor from one pass over ``calib``; with
    ``owners`` ({name: rank}) each ``H`` is reduced to its owner only (and returned there)."""
    owners = owners or {}
    stats = {id(layer): _stats(model, layer).attach() for layer in layers}
    try:
        with preserved_modes(model, "eval"), hooks_visible():
            for x, _ in parallel.shard(calib, batch_size).batches(batch_size, device=device):
                model(x)
    finally:
        for s in stats.values():
            s.detach()
    out = {}
    for layer in layers:
        reduced = parallel.reduce(stats[id(layer)], dst=owners.get(layer.name))
        if owned.mine(owners, layer.name):
            out[id(layer)] = reduced.hessian()
    return out


def _owners(layers: list[LayerPlan]) -> dict[str, int]:
    """Under ``torch.distributed``: each solved tensor's rank, balanced by its solve's cost."""
    if not parallel.active():
        return {}
    costs = {layer.name: owned.solve_cost(*as_matrix(layer.weight).shape) for layer in layers}
    return owned.assign(costs)


def _hookable(layer: LayerPlan) -> str | None:
    """None if the tensor's layer inputs can be collected (an input rule exists), else why."""
    module = layer.module
    if layout_of(module, layer.tensor).in_axis is None:
        return f"gptq solves weight matrices; {layer.name} is a bias"
    if not any(c in INPUT_RULES for c in type(module).__mro__):
        kinds = ", ".join(c.__name__ for c in INPUT_RULES)
        return f"gptq needs the layer inputs of {layer.name} and collects them for {kinds} weights"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"gptq handles ungrouped convolutions only; {layer.layer} has groups={module.groups}"
    return None


def _diagonal(layer: LayerPlan) -> bool:
    """Embedding rows see one-hot inputs: ``H`` is diagonal, so GPTQ is round-to-nearest."""
    return isinstance(layer.module, nn.Embedding | nn.EmbeddingBag)


@torch.no_grad()
def _unseen(model: nn.Module, layers: list[LayerPlan], calib: Dataset, device) -> dict[int, str]:
    """Why each planned tensor's inputs cannot be collected on one calibration batch (its
    hook never runs, or its input rule refuses the call, e.g. a 2-layer LSTM); absent: fine."""
    x, _ = next(iter(calib.batches(8, device=device)))
    why: dict[int, str] = {}
    for layer in layers:
        stats = _stats(model, layer).attach()
        try:
            with preserved_modes(model, "eval"), hooks_visible():
                model(x)
        except UnsupportedLayerError as err:
            why[id(layer)] = str(err)
        finally:
            stats.detach()
        if id(layer) not in why and stats.count_ == 0:
            why[id(layer)] = "no forward hook sees its inputs"
    return why


def _refuse(layer: LayerPlan, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"gptq cannot quantize {layer.layer} ({layer_kind(layer.module)}): {why}; exclude it "
        f"(--exclude {layer.layer}), pass unhooked='rtn' (--unhooked rtn) to round it to "
        "nearest on the same grid, or use another method (e.g. --method uniform)"
    )


@register_quantizer(
    GPTQConfig,
    "second-order (OBQ/GPTQ): layer-wise OBS with quant(w) in place of "
    "0 on calibration data; uniform grid, 2-8 bits",
)
class GPTQ(Quantizer):
    needs_data = True

    def supported(self) -> list[str]:
        return [c.__name__ for c in INPUT_RULES]

    def check(self, layer: LayerPlan, config: GPTQConfig) -> None:
        why = _hookable(layer)
        if why is not None and config.unhooked == "error":
            raise _refuse(layer, why)

    def apply(
        self,
        model: nn.Module,
        layers: list[LayerPlan],
        config: GPTQConfig,
        data: DataLike | None,
        device: torch.device,
    ) -> dict[str, Any]:
        if data is None:
            raise ConfigError(
                "gptq needs calibration data; pass data=... (the CLI uses the run's training data)"
            )
        calib = as_dataset(data, "train").subset(config.samples, seed=config.seed)
        rtn = [layer for layer in layers if _hookable(layer) is not None]
        hooked = [layer for layer in layers if _hookable(layer) is None and not _diagonal(layer)]
        unseen = _unseen(model, hooked, calib, device) if hooked else {}
        if unseen and config.unhooked == "error":  # refused before anything changes
            first = next(layer for layer in hooked if id(layer) in unseen)
            raise _refuse(first, unseen[id(first)])
        rtn_ids = {id(layer) for layer in rtn} | set(unseen)
        exact_rtn = {id(layer) for layer in layers if _diagonal(layer)}
        how = _calibrate(model, layers, calib, device, config, rtn_ids | exact_rtn)
        names = [layer.name for layer in layers if id(layer) in rtn_ids]
        out = {"calibration": how}
        if names:
            warnings.warn(
                f"gptq rounded {len(names)} tensor(s) to nearest (no layer inputs): "
                f"{', '.join(names)}",
                stacklevel=3,
            )
        return {**out, "round_to_nearest": names} if names else out

    @staticmethod
    def solve_layer(layer: LayerPlan, H: torch.Tensor, config: GPTQConfig, solve) -> None:
        """Quantize one tensor on its uniform grid by ``solve(W, H, quant)``; attach the state."""
        scale, zero = fit_grid(layer, config, layer.bits)
        W = as_matrix(layer.weight.float())
        s = scale.to(W).expand(W.shape[0]) if scale.numel() == 1 else scale.to(W)
        z = zero.to(W).expand(W.shape[0]) if zero.numel() == 1 else zero.to(W)
        bits, symmetric, gs = layer.bits, config.symmetric, config.group_size

        def quant(col: torch.Tensor, j: int) -> torch.Tensor:
            if s.dim() == 2:  # static groups: the grid of column j's group, fitted up front
                return fake_quantize(col, s[:, j // gs], z[:, j // gs], bits, symmetric)
            return fake_quantize(col, s.to(col), z.to(col), bits, symmetric)

        keep = None if layer.keep is None else as_matrix(layer.keep)
        Wq = solve(W, H.to(W), quant, damp=config.damp, keep=keep, act_order=config.act_order)
        with torch.no_grad():
            original(layer.module, layer.tensor).copy_(Wq.reshape(layer.weight.shape))
        attach(layer, _grid_quant(layer, scale, zero, config))


def _calibrate(model, layers: list[LayerPlan], calib, device, config, rtn: set[int]) -> str:
    """Quantize ``layers`` in order (round-to-nearest for the ids in ``rtn``); returns how
    the inputs were calibrated: ``blockwise``, ``whole`` (with the reason) or ``one pass``."""
    solve = solver()
    solved = [layer for layer in layers if id(layer) not in rtn]
    owners = _owners(solved)

    def one(layer: LayerPlan, H, share: bool = True) -> torch.Tensor:
        if id(layer) in rtn or not owned.mine(owners, layer.name):
            # rounded to nearest, or solved by its owner rank: the same grid (fitted from
            # the same weights), the solved weights arrive by broadcast
            scale, zero = fit_grid(layer, config, layer.bits)
            attach(layer, _grid_quant(layer, scale, zero, config))
        else:
            with numerical_step(f"the GPTQ solve of {layer.name}", GPTQ_FIX):
                GPTQ.solve_layer(layer, H, config, solve)
        if share:
            _share(layer, owners)
        return getattr(layer.module, layer.tensor).detach()

    if not config.sequential:  # every H from one pass: the ranks solve theirs in parallel
        hessians = input_hessians(model, solved, calib, device, owners=owners) if solved else {}
        for layer in layers:
            one(layer, hessians.get(id(layer)), share=False)
        for layer in solved:
            _share(layer, owners)
        return "one pass"
    steps = {layer.name: layer for layer in layers}
    chain = "calibration='whole'"
    if config.calibration != "whole":
        order = [Step(layer.name, layer.module, layer.tensor, id(layer) not in rtn)
                 for layer in layers]  # fmt: skip
        chain = plan(model, order, calib, device)
        if not isinstance(chain, str):
            bs = batch_for(chain, order, len(calib), 256, "gptq calibration")
            Calibrator(model, chain, calib, lambda s, H: one(steps[s.name], H), device=device,
                       dtype=torch.float64, batch_size=bs, owners=owners).run(order)  # fmt: skip
            return "blockwise"
        if config.calibration == "blockwise":
            raise ConfigError(f"gptq calibration='blockwise': {chain}; use 'auto' or 'whole'")
        warnings.warn(
            f"gptq: calibrating on the whole model, once per tensor ({chain})", stacklevel=4
        )
    for layer in layers:
        one(layer, None if id(layer) in rtn else input_hessian(model, layer, calib, device))
    return f"whole ({chain})"


def _share(layer: LayerPlan, owners: dict[str, int]) -> None:
    """The solved weights of ``layer`` from its owner rank to every rank (alone: nothing)."""
    if layer.name in owners:
        weights = original(layer.module, layer.tensor)
        owned.share({layer.name: weights.data}, owners, "the GPTQ weights")


def _grid_quant(layer: LayerPlan, scale, zero, config: GPTQConfig) -> UniformQuant:
    return UniformQuant(scale, zero, layer.bits, config.symmetric, layer.coded, config.group_size)
