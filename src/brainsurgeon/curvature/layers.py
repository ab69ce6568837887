"""Layer rules: per-sample weight gradients from a layer's input and output gradient.

Dispatch on the module class through :data:`LAYER_RULES` (BackPACK-style); a layer type with
no rule gets a clear :class:`UnsupportedLayerError` naming the general ``method="autograd"``
path. For a Linear layer ``a = W x + b`` the per-sample gradient of anything backpropagated
to ``a`` as ``delta`` is ``delta x^T`` (OBD's rule ``d2E/dw_ij^2 = d2E/da_i^2 x_j^2`` is the
same product squared); a Conv2d sums that product over output positions of the unfolded input.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import UnsupportedLayerError
from ..models.adapters.tensors import layer_kind
from ..state import make_permanent
from .fields import Dense, Field, Outer, sum_of_squares

Targets = dict[str, tuple[nn.Module, str]]


def functional_model(model: nn.Module, *, always_copy: bool = False) -> nn.Module:
    """``model``, or a copy with parametrizations baked in when it has any (or always).

    ``torch.func.functional_call`` cannot override a parametrized tensor (it would call the
    parametrization's ``right_inverse``), so the autograd paths run on this plain copy, whose
    ``fc1.weight`` is the effective (masked) tensor.
    """
    if not always_copy and not any(parametrize.is_parametrized(m) for m in model.modules()):
        return model
    return make_permanent(copy.deepcopy(model))


class LayerRule:
    """Per-sample fields of a layer's tensors from its input ``x`` and output gradient.

    Subclasses implement ``prepare`` (input work shared by every backpropagated vector) and
    ``fields_from``; ``square_sums`` gives ``sum_k f_k^2`` over a batch of vectors ``k``.
    """

    tensors: tuple[str, ...] = ("weight", "bias")

    def check(self, module: nn.Module) -> None:
        return None

    def prepare(self, module: nn.Module, x: Tensor) -> Tensor:
        return x

    def fields_from(self, module: nn.Module, prepared: Tensor, delta: Tensor) -> dict[str, Field]:
        raise NotImplementedError

    def fields(self, module: nn.Module, x: Tensor, delta: Tensor) -> dict[str, Field]:
        return self.fields_from(module, self.prepare(module, x), delta)

    def square_sums(self, module: nn.Module, x: Tensor, deltas: Tensor) -> dict[str, Field]:
        """``{tensor: sum_k f_k^2}`` for output gradients ``deltas`` (K, n, ...)."""
        prepared = self.prepare(module, x)
        first = self.fields_from(module, prepared, deltas[0])
        if all(isinstance(f, Outer) for f in first.values()):  # views: cheap to keep all
            per_k = [first] + [self.fields_from(module, prepared, d) for d in deltas[1:]]
            return {t: sum_of_squares(f[t] for f in per_k) for t in first}
        totals = {t: f.dense().g.pow(2) for t, f in first.items()}
        for d in deltas[1:]:
            for t, f in self.fields_from(module, prepared, d).items():
                totals[t] += f.dense().g.pow(2)
        return {t: Dense(v) for t, v in totals.items()}


class LinearRule(LayerRule):
    """``nn.Linear``: ``g_n = delta_n x_n^T`` (Outer) for 2-D inputs, summed over extra dims."""

    def square_sums(self, module: nn.Linear, x: Tensor, deltas: Tensor) -> dict[str, Field]:
        if x.dim() != 2:
            return super().square_sums(module, x, deltas)
        u2 = deltas.pow(2).sum(0)  # OBD's d2E/da^2, exact: sum_k (J^T s_k)^2
        return {
            "weight": Outer(u2, x * x, module.weight.shape),
            "bias": Outer(u2, None, torch.Size([u2.shape[1]])),
        }

    def fields_from(self, module: nn.Linear, x: Tensor, delta: Tensor) -> dict[str, Field]:
        if x.dim() == 2:
            out = {"weight": Outer(delta, x, module.weight.shape)}
            out["bias"] = Outer(delta, None, torch.Size([delta.shape[1]]))
            return out
        xs, ds = x.flatten(1, -2), delta.flatten(1, -2)  # (n, T, in), (n, T, out)
        return {"weight": Dense(torch.einsum("nto,nti->noi", ds, xs)), "bias": Dense(ds.sum(1))}


def conv2d_columns(module: nn.Conv2d, x: Tensor) -> Tensor:
    """Unfolded input (n, in*kh*kw, L), ordered like ``weight.reshape(out, -1)``."""
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
    else:
        x = F.pad(x, module._reversed_padding_repeated_twice)
    return F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)


class Conv2dRule(LayerRule):
    """``nn.Conv2d`` (groups=1): ``g_n = sum_l delta_n[:, l] cols_n[:, l]^T`` (Dense)."""

    def check(self, module: nn.Conv2d) -> None:
        if module.groups != 1:
            raise UnsupportedLayerError(
                f"the Conv2d rule handles groups=1, found groups={module.groups}; "
                'use method="autograd" for grouped/depthwise convolutions'
            )

    def prepare(self, module: nn.Conv2d, x: Tensor) -> Tensor:
        return conv2d_columns(module, x)

    def fields_from(self, module: nn.Conv2d, cols: Tensor, delta: Tensor) -> dict[str, Field]:
        d = delta.flatten(2)
        g = torch.bmm(d, cols.transpose(1, 2)).reshape(-1, *module.weight.shape)
        return {"weight": Dense(g), "bias": Dense(d.sum(2))}


LAYER_RULES: dict[type[nn.Module], LayerRule] = {
    nn.Linear: LinearRule(),
    nn.Conv2d: Conv2dRule(),
}


def rule_for(module: nn.Module, name: str) -> LayerRule:
    """The rule for ``module`` (walking its class hierarchy) or a clear error."""
    for cls in type(module).__mro__:
        if cls in LAYER_RULES:
            rule = LAYER_RULES[cls]
            rule.check(module)
            return rule
    supported = ", ".join(c.__name__ for c in LAYER_RULES)
    raise UnsupportedLayerError(
        f"{name} belongs to a {layer_kind(module)} layer; fast per-sample rules exist for "
        f'{supported} only; use method="autograd" (any layer, slower) or hessian="exact" '
        "for small nets"
    )


class Taps:
    """Records each target layer's input and output during one forward pass."""

    def __init__(self, targets: Targets) -> None:
        self.modules: dict[int, nn.Module] = {}
        self.names: dict[int, str] = {}
        for name, (module, _) in targets.items():
            self.modules[id(module)] = module
            self.names.setdefault(id(module), name)
        self.inputs: dict[int, Tensor] = {}
        self.outputs: dict[int, Tensor] = {}
        self._repeated: set[int] = set()

    def _hook(self, module: nn.Module, inputs, output):
        key = id(module)
        if key in self.outputs:
            self._repeated.add(key)
            return output
        if not output.requires_grad:  # frozen weights: still need d(logits)/d(output)
            output = output + torch.zeros((), device=output.device, requires_grad=True)
        self.inputs[key], self.outputs[key] = inputs[0].detach(), output
        return output

    @contextmanager
    def recording(self) -> Iterator[Taps]:
        self.inputs.clear()
        self.outputs.clear()
        self._repeated.clear()
        handles = [m.register_forward_hook(self._hook) for m in self.modules.values()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def missing(self) -> list[str]:
        """Layers whose forward hook did not fire (their parent uses the weights directly)."""
        return [self.names[k] for k in self.modules if k not in self.outputs]

    def repeated(self) -> list[str]:
        """Layers that ran more than once in the pass (shared weights)."""
        return [self.names[k] for k in self._repeated]
