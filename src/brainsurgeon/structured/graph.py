"""Dependency tracking: which tensors a removable unit couples (see :mod:`.groups`).

``find_groups`` traces the model with ``torch.fx``, runs the example input through it
(``ShapeProp``) and walks the graph in order. Every node's value carries an :class:`Axis`:
which of its dimensions indexes units, and which *space* (a set of coupled units) each run of
that dimension belongs to. A Linear, conv or attention layer opens a new space (its producer
slices); norms add producer slices; elementwise ops, dropout and pooling pass the axis on;
``flatten`` turns each unit into a run of ``h * w`` columns; a residual addition merges the
spaces of its operands into one; ``torch.cat`` lays spaces side by side with offsets; the
next Linear or conv records consumer slices. A space that reaches the model output (or is
added to the model input, or feeds an op that mixes units such as softmax) is *pinned*: its
units cannot be removed and it yields no group. An op that touches a unit dimension and has
no rule is an error naming the node, never a silently wrong group.

Rules live in :mod:`.rules`; add your own with :func:`register_rule`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ConfigError, UnsupportedLayerError
from .groups import Group, Slice


@dataclass(frozen=True)
class Part:
    """``units`` units of ``space`` (None: units no group owns) laid along an axis from
    index ``offset``, each a run of ``unit_size`` indices."""

    space: int | None
    units: int
    unit_size: int = 1
    offset: int = 0


@dataclass(frozen=True)
class Axis:
    """Dimension ``dim`` (negative, counted from the right, so broadcasting keeps it) of a
    value, split into parts."""

    dim: int
    parts: tuple[Part, ...]

    def scaled(self, factor: int, dim: int) -> Axis:
        """Each index becomes ``factor`` consecutive indices (a flatten of inner dims)."""
        parts = tuple(
            Part(p.space, p.units, p.unit_size * factor, p.offset * factor) for p in self.parts
        )
        return Axis(dim, parts)

    def shifted(self, by: int) -> tuple[Part, ...]:
        return tuple(Part(p.space, p.units, p.unit_size, p.offset + by) for p in self.parts)


@dataclass
class Space:
    """A set of coupled units: what becomes one :class:`Group`."""

    name: str
    kind: str
    units: int
    producers: list[Slice] = field(default_factory=list)
    consumers: list[Slice] = field(default_factory=list)
    pinned: str | None = None
    notes: list[str] = field(default_factory=list)


class Walker:
    """Walks a shape-propagated fx graph, assigning an :class:`Axis` (or None) to each node."""

    def __init__(self, gm: fx.GraphModule | None) -> None:
        self.gm = gm
        self.spaces: list[Space] = []
        self.parent: list[int] = []
        self.axes: dict[fx.Node, Axis | None] = {}
        self.module_space: dict[str, int] = {}

    # -- spaces -----------------------------------------------------------------------
    def new_space(self, name: str, kind: str, units: int) -> int:
        if name in self.module_space:  # a layer called twice produces the same units
            return self.find(self.module_space[name])
        self.spaces.append(Space(name, kind, units))
        self.parent.append(len(self.parent))
        self.module_space[name] = len(self.spaces) - 1
        return len(self.spaces) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def space(self, i: int) -> Space:
        return self.spaces[self.find(i)]

    def union(self, a: Axis, b: Axis, node: fx.Node) -> None:
        """Merge the spaces of two axes that must index the same units (a residual add)."""
        same = a.dim == b.dim and [(p.units, p.unit_size, p.offset) for p in a.parts] == [
            (p.units, p.unit_size, p.offset) for p in b.parts
        ]
        if not same:
            raise self.error(node, "its operands lay out their units differently")
        for pa, pb in zip(a.parts, b.parts, strict=True):
            if pa.space is None or pb.space is None:
                for p in (pa, pb):
                    if p.space is not None:
                        self.space(p.space).pinned = f"combined with unowned values at {node.name}"
                continue
            ra, rb = self.find(pa.space), self.find(pb.space)
            if ra != rb:
                keep, drop = min(ra, rb), max(ra, rb)
                self.spaces[keep].notes.append(
                    f"joined with {self.spaces[drop].name} at {node.name}"
                )
                self.parent[drop] = keep
                s, d = self.spaces[keep], self.spaces[drop]
                s.producers += d.producers
                s.consumers += d.consumers
                s.notes += d.notes
                s.pinned = s.pinned or d.pinned

    def pin(self, axis: Axis | None, why: str) -> None:
        for p in axis.parts if axis else ():
            if p.space is not None and self.space(p.space).pinned is None:
                self.space(p.space).pinned = why

    def note(self, axis: Axis, text: str) -> None:
        for p in axis.parts:
            if p.space is not None:
                self.space(p.space).notes.append(text)

    def add_slices(self, axis: Axis, module: str, tensor: str, tensor_axis: int, role: str):
        """Record ``module.tensor`` dimension ``tensor_axis`` as indexed by ``axis``'s parts."""
        for p in axis.parts:
            if p.space is not None:
                s = Slice(module, tensor, tensor_axis, p.unit_size, p.offset)
                getattr(self.space(p.space), role).append(s)

    # -- nodes ------------------------------------------------------------------------
    def shape(self, node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if hasattr(meta, "shape") else ()

    def axis(self, arg) -> Axis | None:
        return self.axes.get(arg) if isinstance(arg, fx.Node) else None

    def inputs(self, node: fx.Node) -> list[Axis]:
        found: list[Axis] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(self.axes.get(n)))
        return [a for a in found if a is not None]

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def error(self, node: fx.Node, why: str) -> UnsupportedLayerError:
        what, key = describe_target(self, node)
        scope = node.meta.get("bs_scope") or ""
        where = f" ({scope})" if scope and scope != node.target else ""
        return UnsupportedLayerError(
            f"cannot follow {what} at node '{node.name}'{where}: {why}; register a rule with "
            f"brainsurgeon.structured.register_rule({key}, rule): 'pin' keeps every unit it "
            "reads, 'passthrough' if it acts on each unit alone"
        )

    def run(self) -> None:
        from .rules import rule_for

        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                self.axes[node] = None
            elif node.op == "output":
                for a in self.inputs(node):
                    self.pin(a, "feeds the model output")
            else:
                rule = rule_for(self, node)
                if rule is None:
                    if self.inputs(node):
                        raise self.error(node, "it has no rule and touches a unit dimension")
                    self.axes[node] = None
                else:
                    self.axes[node] = rule(self, node)

    def groups(self) -> list[Group]:
        out = []
        for i, s in enumerate(self.spaces):
            if self.find(i) != i or s.pinned is not None:
                continue
            out.append(
                Group(
                    name=s.name,
                    kind=s.kind,
                    units=s.units,
                    producers=tuple(dict.fromkeys(s.producers)),
                    consumers=tuple(dict.fromkeys(s.consumers)),
                    notes=tuple(dict.fromkeys(s.notes)),
                )
            )
        return out


def describe_target(walker: Walker, node: fx.Node) -> tuple[str, str]:
    """What a node calls, for messages, and the key :func:`register_rule` takes for it."""
    if node.op == "call_module":
        cls = type(walker.module(node)).__name__.removeprefix("Parametrized")
        return f"{cls} '{node.target}'", cls
    if node.op == "call_method":
        return f"Tensor.{node.target}", repr(node.target)
    mod = getattr(node.target, "__module__", None) or ""
    name = getattr(node.target, "__name__", str(node.target))
    mod = {"torch._C._nn": "torch.nn.functional", "_operator": "operator"}.get(mod, mod)
    if mod.startswith("torch") and not mod.startswith("torch.nn"):
        mod = "torch"
    full = f"{mod}.{name}" if mod else name
    return full, full


class _Tracer(fx.Tracer):
    """fx tracer that keeps registered layers whole and remembers the enclosing module."""

    def __init__(self, children_as_leaves: bool = False) -> None:
        super().__init__()
        self.children_as_leaves = children_as_leaves
        self._bs_scope = [""]
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from .rules import module_rule

        if self.children_as_leaves and not isinstance(m, nn.Sequential):
            return True
        return module_rule(m) is not None or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self._bs_scope.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            self.failed_in = self.failed_in or self._bs_scope[-1]
            raise
        finally:
            self._bs_scope.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta["bs_scope"] = self._bs_scope[-1]
        return node


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as an fx GraphModule (sharing its modules); a clear error if fx cannot."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:
        if not isinstance(model, nn.Sequential):
            where = tracer.failed_in or ""
            cls = type(model.get_submodule(where)).__name__
            raise UnsupportedLayerError(
                f"torch.fx cannot trace {cls} '{where or 'model'}' ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); make its forward traceable (no Python "
                f"control flow on tensor values) or treat {cls} as one layer with "
                f"brainsurgeon.structured.register_rule({cls}, rule)"
            ) from None
        graph = _Tracer(children_as_leaves=True).trace(model)  # a plain chain of layers
    return fx.GraphModule(model, graph)


def find_groups(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    granularity: str | Sequence[str] | None = None,
) -> list[Group]:
    """The removable groups of ``model``, in graph order.

    ``example_input``: one batch (a tensor or a tuple of forward arguments), run once in eval
    mode to learn shapes. ``granularity``: ``"neuron"`` (Linear outputs), ``"channel"`` (conv
    outputs), ``"head"`` (attention heads), several of them, or None for all.
    """
    kinds = _kinds(granularity)
    whole = whole_model_rule(model)
    if whole is not None:  # a model fx cannot trace, described by its own rule
        walker = Walker(None)
        whole(walker, "", model)
        return [g for g in walker.groups() if g.kind in kinds]
    gm = trace(model)
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
    finally:
        model.train(was_training)
    walker = Walker(gm)
    walker.run()
    return [g for g in walker.groups() if g.kind in kinds]


STRUCTURED_KINDS = ("neuron", "channel", "head")

#: model class -> ``spaces(walker, prefix, model)``: the groups of a whole model that fx cannot
#: trace (a Hugging Face encoder), described directly; see :mod:`.hf_rules`.
WHOLE_MODEL_RULES: dict[type[nn.Module], Callable[[Walker, str, nn.Module], None]] = {}


def whole_model_rule(model: nn.Module):
    for cls in type(model).__mro__:
        if cls in WHOLE_MODEL_RULES:
            return WHOLE_MODEL_RULES[cls]
    return None


def _kinds(granularity: str | Sequence[str] | None) -> set[str]:
    if granularity is None:
        return set(STRUCTURED_KINDS)
    wanted = {granularity} if isinstance(granularity, str) else set(granularity)
    bad = wanted - set(STRUCTURED_KINDS)
    if bad:
        raise ConfigError(
            f"unknown structured granularity {sorted(bad)}; valid: {', '.join(STRUCTURED_KINDS)}"
        )
    return wanted
