"""Block-by-block calibration of the layer-wise solvers (SparseGPT / OBC, GPTQ).

The sequential layer-wise solvers calibrate each layer on the outputs of the already solved
layers before it. Re-running the whole model per layer costs a full forward pass per layer
and (for pruning) a copy of the model; here, with a :mod:`chain <.chain>` of blocks:

1. the inputs of the first block (its positional and keyword arguments: attention masks)
   are captured once per batch by a pre-hook that stops the forward;
2. per block, a working copy (parametrizations baked in) runs on the stored inputs, batch
   by batch, while :class:`LayerInputStats` hooks sum ``X^T X`` of its target layers; the
   layers are solved in order, and the block is re-run between layers that feed each other
   (targets that see the very same input tensor, like q/k/v, share one pass);
3. the solved block's outputs replace the stored inputs: the next block's inputs.

Resident: one block copy, its statistics and the activations at one boundary. Targets
before the first block (an embedding) or after the last (a classifier head) are solved on
forward passes of the model that stop at the first block or replay the last block's stored
outputs; a solved one there is replaced, in those passes, by a copy holding its new weight.
``solve(step, H)`` returns the tensor's new effective value; ``H`` is None for steps that
need no statistics (round-to-nearest) and on ranks that do not own the layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import distributed as parallel
from ..data.core import Dataset
from ..distributed import layers
from ..models.adapters import layout_of
from ..models.adapters.rows import current_rows, valid_rows
from ..state import make_permanent
from ..utils import preserved_modes
from .chain import PREFIX, SUFFIX, Chain, find_chain, first, probe
from .layer_inputs import LayerInputStats, hooks_visible, input_owner

CALIBRATIONS = ("auto", "blockwise", "whole")


@dataclass(frozen=True)
class Step:
    """One target tensor to solve: ``name``, its ``module`` in the model and ``tensor``
    name; ``stats``: whether its solve needs the input Hessian."""

    name: str
    module: nn.Module
    tensor: str
    stats: bool = True


Solve = Callable[[Step, "Tensor | None"], Tensor]


class _Stop(Exception):  # noqa: N818 - control flow, never escapes
    def __init__(self, args, kwargs) -> None:  # raised inside the adapter: its token mask
        self.args_, self.kwargs_, self.rows = args, kwargs, current_rows()


def plan(model: nn.Module, steps: list[Step], data: Dataset, device) -> Chain | str:
    """The checked chain of ``model`` for ``steps``, or why block-wise calibration cannot run
    (then calibrate on the whole model)."""
    chain = find_chain(model)
    if chain is None:
        return "no chain of blocks (an nn.Sequential, or a ModuleList of layers) was found"
    paths = {id(m): p for p, m in model.named_modules()}
    owners = {s.name: input_owner(model, s.module)[0] for s in steps}
    where = {s.name: paths.get(id(s.module), "") for s in steps}
    x, _ = next(iter(data.batches(2, device=_model_device(model, device))))
    with preserved_modes(model, "eval"), hooks_visible():
        why = probe(model, chain, owners, x, where)
    return why if why is not None else chain


def batch_for(chain: Chain, steps: list[Step], samples: int, default: int, what: str) -> int:
    """The calibration batch under the memory budget (:mod:`brainsurgeon.memory`).

    Resident whatever the batch: the activations at one boundary (``samples`` x the block
    input) and the largest stage's ``X^T X`` sums (float64); per sample of a batch: its
    inputs to every target of a stage (the largest) and two block boundaries."""
    from ..memory import chunk

    cols: dict[int, float] = {}
    per: dict[int, float] = {}
    for s in steps:
        w = getattr(s.module, s.tensor)
        width = w.numel() / w.shape[layout_of(s.module, s.tensor).out_axis]
        stage = chain.stage[s.name]
        cols[stage] = cols.get(stage, 0.0) + 8 * width**2 * s.stats
        per[stage] = per.get(stage, 0.0) + chain.input_bytes.get(s.name, 0.0)
    fixed = samples * chain.boundary_bytes + max(cols.values(), default=0.0)
    per_sample = 2 * chain.boundary_bytes + max(per.values(), default=0.0)
    return chunk(int(per_sample), default, what=what, fixed=int(fixed))


def _model_device(model: nn.Module, default) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device(default)


def _to(obj, device):
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


class Calibrator:
    """Runs ``steps`` block by block over ``data`` (see the module docstring).

    ``device``: where the working block runs; ``offload``: keep the stored activations on
    the CPU between uses (the model itself stays where it is); ``dtype``: of ``H``;
    ``owners``: ``{name: rank}`` under ``torch.distributed``."""

    def __init__(
        self,
        model: nn.Module,
        chain: Chain,
        data: Dataset,
        solve: Solve,
        *,
        batch_size: int = 256,
        device=None,
        dtype: torch.dtype = torch.float32,
        owners: dict[str, int] | None = None,
        offload: bool = False,
    ) -> None:
        self.model, self.chain, self.data, self.solve = model, chain, data, solve
        self.batch_size, self.dtype, self.owners = batch_size, dtype, owners or {}
        self.home = _model_device(model, device or "cpu")
        self.device = torch.device(device) if device is not None else self.home
        self.store = torch.device("cpu") if offload else self.device
        self.replaced: dict[int, nn.Module] = {}
        self.handles: list = []

    @torch.no_grad()
    def run(self, steps: list[Step]) -> None:
        by_stage: dict[int, list[Step]] = {}
        for s in steps:
            by_stage.setdefault(self.chain.stage[s.name], []).append(s)
        blocks = self.chain.blocks(self.model)
        with preserved_modes(self.model, "eval"), hooks_visible():
            try:
                self._solve_group_wise(by_stage.get(PREFIX, []), self._model_modules,
                                       lambda one: self._prefix(blocks[0], one))  # fmt: skip
                stored = self._prefix(blocks[0], False, capture=True)
            finally:
                self._unreplace()
            keep_raw = bool(by_stage.get(SUFFIX))
            for i, block in enumerate(blocks):
                raw = keep_raw and i == len(blocks) - 1
                stored = self._block(i, block, by_stage.get(i, []), stored, raw)
            try:
                self._solve_group_wise(by_stage.get(SUFFIX, []), self._model_modules,
                                       lambda one: self._suffix(blocks, stored, one))  # fmt: skip
            finally:
                self._unreplace()

    # -- the passes ------------------------------------------------------------------
    def _batches(self, first_only: bool):
        shard = parallel.shard(self.data, self.batch_size)
        for b, (x, _) in enumerate(shard.batches(self.batch_size, device=self.home)):
            if first_only and b:
                return
            yield x

    def _prefix(self, block0: nn.Module, first_only: bool, capture: bool = False):
        """Forward passes that stop at the first block; ``capture``: its stored inputs."""

        def stop(module, args, kwargs):
            raise _Stop(args, kwargs)

        stored, handle = [], block0.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            for x in self._batches(first_only):
                try:
                    self.model(x)
                except _Stop as s:
                    if capture:  # the inputs and which of their rows are real tokens
                        a, k = _to(s.args_, self.store), _to(s.kwargs_, self.store)
                        stored.append((a[0], a[1:], k, s.rows))
        finally:
            handle.remove()
        return stored

    def _suffix(self, blocks: list[nn.Module], stored, first_only: bool) -> None:
        """Forward passes in which every block returns the stored output of the last one."""
        replay = iter(self.raw)
        current = {}

        def patched(*args, **kwargs):
            return current["out"]

        for block in blocks:
            block.forward = patched
        try:
            for x in self._batches(first_only):
                current["out"] = _to(next(replay), self.home)
                self.model(x)
        finally:
            for block in blocks:
                del block.forward

    def _run_block(self, work: nn.Module, i: int, stored, first_only: bool, keep: bool = False):
        """Run block ``i`` on the stored inputs; ``keep``: return the next stored inputs
        (and, in ``self.raw``, the block's whole outputs when ``keep == "raw"``)."""
        out, self.raw = [], []
        for x, rest, kwargs, rows in stored[:1] if first_only else stored:
            x = x.to(self.device)
            with valid_rows(rows):
                y = work(x.clone() if i in self.chain.inplace else x, *_to(rest, self.device),
                         **_to(kwargs, self.device))  # fmt: skip
            if keep:
                out.append((first(y).to(self.store), rest, kwargs, rows))
            if keep == "raw":
                self.raw.append(_to(y, self.store))
        return out

    def _block(self, i: int, block: nn.Module, steps: list[Step], stored, raw: bool):
        """Solve ``steps`` inside block ``i``; return the next block's stored inputs."""
        if steps or self.device != self.home:
            work = make_permanent(copy.deepcopy(block)).to(self.device)
        else:
            work = block
        if steps:
            paths = {id(m): p for p, m in block.named_modules()}
            inner = {s.name: work.get_submodule(paths[id(s.module)]) for s in steps}
            self._solve_group_wise(steps, lambda s: (inner[s.name], work),
                                   lambda one: self._run_block(work, i, stored, one))  # fmt: skip
        out = self._run_block(work, i, stored, False, "raw" if raw else True)
        stored.clear()  # free the old boundary before the next block
        return out

    # -- grouping and solving --------------------------------------------------------
    def _model_modules(self, step: Step) -> tuple[nn.Module, nn.Module]:
        """The module to hook for ``step`` in prefix/suffix passes (inside its replacement
        copy once a tensor of the same owner was solved) and the root to search owners in."""
        owner, owned = input_owner(self.model, step.module)
        copy_ = self.replaced.get(id(owner))
        if copy_ is None:
            return step.module, self.model
        return (copy_.get_submodule(owned) if owned else copy_), copy_

    def _solve_group_wise(self, steps: list[Step], modules, run) -> None:
        """Solve ``steps`` in order; one statistics pass per group of consecutive steps that
        see the same input tensor (so solving one cannot change another's inputs)."""
        for group in self._groups(steps, modules, run):
            stats = {}
            for s in group:
                if s.stats:
                    module, root = modules(s)
                    owner = input_owner(root, module)
                    stats[s.name] = LayerInputStats(
                        module, s.name, self.dtype, tensor=s.tensor, owner=owner
                    ).attach()
            try:
                if stats:
                    run(False)
            finally:
                for st in stats.values():
                    st.detach()
            for s in group:
                H = None
                if s.name in stats:
                    parallel.reduce(stats[s.name], dst=self.owners.get(s.name))
                    H = stats[s.name].hessian() if layers.mine(self.owners, s.name) else None
                self._write(s, self.solve(s, H), modules)

    def _groups(self, steps: list[Step], modules, run) -> list[list[Step]]:
        if len(steps) < 2:
            return [steps] if steps else []
        seen: dict[str, tuple[int, int]] = {}

        def hook(name):
            def record(module, args, kwargs, out):
                if name not in seen and args and isinstance(args[0], Tensor):
                    seen[name] = (id(args[0]), args[0]._version)
                    keep.append(args[0])  # alive until the pass ends: ids stay unique

            return record

        keep: list[Tensor] = []
        owners = [input_owner(modules(s)[1], modules(s)[0])[0] for s in steps]
        handles = [
            o.register_forward_hook(hook(s.name), with_kwargs=True)
            for o, s in zip(owners, steps, strict=True)
        ]
        try:
            run(True)
        finally:
            for h in handles:
                h.remove()
        groups = [[steps[0]]]
        for s in steps[1:]:
            head = seen.get(groups[-1][0].name)
            same = head is not None and seen.get(s.name) == head and self._alone(s, modules)
            same = same and all(self._alone(g, modules) for g in groups[-1])
            groups[-1].append(s) if same else groups.append([s])
        return groups

    @staticmethod
    def _alone(step: Step, modules) -> bool:
        """True when the tensor's inputs are its module's own inputs: not one that its
        parent computes (``out_proj``) nor a second tensor of a module (``weight_hh``)."""
        module, root = modules(step)
        return input_owner(root, module)[1] == "" and step.tensor in ("weight", "in_proj_weight")

    def _write(self, step: Step, new: Tensor, modules) -> None:
        """Put the solved tensor where the following passes see it."""
        module, root = modules(step)
        if root is self.model:  # prefix / suffix: replace the owner by a copy in the passes
            owner, owned = input_owner(self.model, step.module)
            copy_ = make_permanent(copy.deepcopy(owner))
            self.replaced[id(owner)] = copy_
            self.handles.append(owner.register_forward_hook(
                lambda m, a, k, out, c=copy_: c(*a, **k), with_kwargs=True))  # fmt: skip
            module = copy_.get_submodule(owned) if owned else copy_
        getattr(module, step.tensor).copy_(new.to(getattr(module, step.tensor)))

    def _unreplace(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.replaced = [], {}
