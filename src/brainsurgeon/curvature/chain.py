"""A model's chain of blocks, for calibrating the layer-wise solvers block by block.

A *chain* is a list of modules that the forward pass calls one after the other, each on
the previous one's output (its first element, when a block returns a tuple, as Hugging Face
layers do), every call with the same extra arguments (an attention mask). Candidates
(:func:`find_chain`): the children of an ``nn.Sequential`` model, else the largest
``nn.ModuleList`` of layers of one class (``encoder.layer``, ``TransformerEncoder.layers``).

:func:`probe` runs one batch through the model with light hooks and checks that the chain
really is one: each block called once, in order, on its predecessor's output, nothing
between two blocks, and each target tensor used in exactly one *stage* (``prefix``: before
the first block; block ``i``; ``suffix``: after the last). Anything else is a reason to
calibrate on the whole model instead (returned as text, never guessed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

PREFIX, SUFFIX = -1, 1 << 30


@dataclass
class Chain:
    """``paths`` of the blocks in call order; after :func:`probe`, ``stage`` of every target
    (``PREFIX``, a block index or ``SUFFIX``) and ``inplace`` (blocks that modify their input)."""

    paths: list[str]
    stage: dict[str, int] = field(default_factory=dict)
    inplace: set[int] = field(default_factory=set)
    boundary_bytes: float = 0.0  # per sample: the largest block input
    input_bytes: dict[str, float] = field(default_factory=dict)  # per sample, by target

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [model.get_submodule(p) for p in self.paths]


def find_chain(model: nn.Module) -> Chain | None:
    """The candidate chain of ``model`` (not yet checked; see :func:`probe`), or None."""
    if isinstance(model, nn.Sequential) and len(model) > 1:
        return Chain([name for name, _ in model.named_children()])
    best, size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        n = sum(p.numel() for p in module.parameters())
        if n > size:
            best, size = [f"{name}.{i}" if name else str(i) for i in range(len(module))], n
    return Chain(best) if best else None


def first(out):
    """A block's output as the next block's input: the first element of a tuple or list."""
    return out[0] if isinstance(out, tuple | list) else out


class _Recorder:
    """Hooks that record the block calls and the stage at which each target ran."""

    def __init__(self, chain: Chain, blocks: list[nn.Module], owners: dict[str, nn.Module]):
        self.calls: list[tuple[int, tuple, dict, object]] = []  # (block, args, kwargs, out)
        self.running: int | None = None
        self.seen: dict[str, set[int]] = {n: set() for n in owners}
        self.versions: dict[int, int] = {}
        self.nbytes: dict[str, int] = {}
        self.handles = []
        for i, block in enumerate(blocks):
            self.handles.append(block.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self.handles.append(block.register_forward_hook(self._post(i), with_kwargs=True))
        for name, owner in owners.items():
            self.handles.append(owner.register_forward_pre_hook(self._target(name)))

    def _pre(self, i):
        def hook(module, args, kwargs):
            self.running = i
            x = args[0] if args else None
            self.versions[i] = x._version if isinstance(x, Tensor) else 0
            self.calls.append((i, args, kwargs, None))

        return hook

    def _post(self, i):
        def hook(module, args, kwargs, out):
            self.running = None
            x = args[0] if args else None
            if isinstance(x, Tensor) and x._version != self.versions[i]:
                self.inplace.add(i)
            j, a, k, _ = self.calls[-1]
            self.calls[-1] = (j, a, k, out)

        return hook

    def _target(self, name):
        def hook(module, args):
            if args and isinstance(args[0], Tensor) and name not in self.nbytes:
                self.nbytes[name] = args[0].numel() * args[0].element_size()
            if self.running is not None:
                self.seen[name].add(self.running)
            elif not self.calls:
                self.seen[name].add(PREFIX)
            else:
                self.seen[name].add(SUFFIX if self.calls[-1][0] == self.n - 1 else -2)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _same(a, b) -> bool:
    return a is b or (isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b))


def _check_calls(calls, n: int) -> str | None:
    if [c[0] for c in calls] != list(range(n)):
        return f"the blocks were called in the order {[c[0] for c in calls][:8]}, not once each"
    _, args0, kwargs0, _ = calls[0]
    if not args0 or not isinstance(args0[0], Tensor):
        return "the first block is not called on a tensor"
    for (i, args, kwargs, _), prev in zip(calls[1:], calls, strict=False):
        if not args or first(prev[3]) is not args[0]:
            return f"block {i} is not called on the output of block {i - 1}"
        if len(args) != len(args0) or not all(
            _same(a, b) for a, b in zip(args[1:], args0[1:], strict=True)
        ):
            return f"block {i} gets other positional arguments than block 0"
        if set(kwargs) != set(kwargs0) or not all(_same(kwargs[k], kwargs0[k]) for k in kwargs):
            return f"block {i} gets other keyword arguments than block 0"
    return None


@torch.no_grad()
def probe(
    model: nn.Module, chain: Chain, owners: dict[str, nn.Module], x: Tensor, paths: dict
) -> str | None:
    """Check ``chain`` on one batch ``x``; fill ``chain.stage`` for the targets' ``owners``
    ({name: module whose forward runs the tensor}). None when usable, else the reason."""
    blocks = chain.blocks(model)
    rec = _Recorder(chain, blocks, owners)
    rec.n, rec.inplace = len(blocks), chain.inplace
    try:
        model(x)
    finally:
        rec.remove()
    why = _check_calls(rec.calls, len(blocks))
    if why is not None:
        return why
    for name, stages in rec.seen.items():
        if not stages:
            return f"{name} did not run on a calibration batch"
        if len(stages) != 1 or -2 in stages:
            return f"{name} is used {'between blocks' if -2 in stages else 'in two stages'}"
        (stage,) = stages
        inside = paths[name] == chain.paths[stage] if 0 <= stage < len(blocks) else True
        if not inside and not paths[name].startswith(chain.paths[stage] + "."):
            return f"{name} runs inside block {chain.paths[stage]} but does not belong to it"
        chain.stage[name] = stage
    n = max(len(x), 1)
    chain.input_bytes = {k: v / n for k, v in rec.nbytes.items()}
    chain.boundary_bytes = max(a[0].numel() * a[0].element_size() for _, a, _, _ in rec.calls) / n
    return None
