"""Per-sample gradients ``g_n`` and per-sample GGN diagonals ``h_n`` for a set of tensors.

Two interchangeable paths:

* ``method="rules"``: one forward pass with hooks on the target layers, one backward pass of
  ``dL_n/dz_n`` to the layers' outputs, and one backward pass (to those outputs only) per
  column ``k`` of the output-Hessian factor (:mod:`.outputs`); the layer rules
  (:mod:`.layers`) turn these into per-sample fields. For ReLU/MaxPool nets with cross
  entropy the GGN diagonal equals the exact Hessian diagonal (piecewise-linear layers).
* ``method="autograd"``: ``torch.func.vmap(grad(...))`` over samples, for any layer.

Gradients are taken with respect to the *effective* tensors (masks applied), never leave
``.grad`` on the model, and the caller's no-grad state does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..errors import ConfigError, UnsupportedLayerError
from .fields import Dense, Field
from .layers import Taps, Targets, check_targets, functional_model, rule_for
from .outputs import LossFn, check_loss, output_factor, output_gradients

METHODS = ("rules", "autograd")


@dataclass
class Sample:
    """One chunk's per-sample statistics: ``loss_sum`` and ``{name: field}`` maps."""

    n: int
    loss_sum: float
    g: dict[str, Field] | None = None
    h: dict[str, Field] | None = None


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    return method


class PerSampleBackend:
    """``backend(x, y, grads=True, ggn=False) -> Sample`` for the tensors in ``targets``."""

    def __init__(
        self, model: nn.Module, targets: Targets, loss_fn: LossFn, method: str = "rules"
    ) -> None:
        self.model, self.targets, self.loss_fn = model, dict(targets), loss_fn
        self.method = check_method(method)
        if not self.targets:
            raise ConfigError("no tensors to collect statistics for (targets is empty)")
        if self.method == "rules":
            check_targets(self.targets)
            self.taps = Taps(self.targets)

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        grads: bool = True,
        ggn: bool = False,
        what: str = "statistics",
    ) -> Sample:
        if self.method == "rules":
            return self._rules(x, y, grads, ggn, what)
        return self._autograd(x, y, grads, ggn, what)

    # ----------------------------------------------------------------- layer rules
    def _rules(self, x, y, grads, ggn, what) -> Sample:
        with torch.enable_grad(), self.taps.recording() as taps:
            z = self.model(x)
        missing = taps.missing()
        if missing:
            raise UnsupportedLayerError(
                f"{missing} did not run in the forward pass; prune only tensors the model uses"
            )
        keys = list(taps.outputs)
        outs = [taps.outputs[k] for k in keys]
        loss_sum, v = output_gradients(self.loss_fn, z, y, what)
        out = Sample(int(x.shape[0]), float(loss_sum))
        if grads:
            deltas = torch.autograd.grad(z, outs, v, retain_graph=ggn)
            out.g = self._fields(taps, dict(zip(keys, deltas, strict=True)))
        if ggn:
            factor = output_factor(self.loss_fn, z, y).permute(2, 0, 1).contiguous()
            # one backward pass per factor column: cheaper than is_grads_batched's vmap on CPU
            per_k = [torch.autograd.grad(z, outs, f, retain_graph=True) for f in factor]
            batched = [torch.stack(d) for d in zip(*per_k, strict=True)]  # (K, n, ...) each
            out.h = self._ggn_fields(taps, dict(zip(keys, batched, strict=True)))
        return out

    def _fields(self, taps: Taps, deltas: dict[int, Tensor]) -> dict[str, Field]:
        out = {}
        for name, (module, tensor_name) in self.targets.items():
            key = id(module)
            fields = rule_for(module, name).fields(module, taps.inputs[key], deltas[key])
            out[name] = fields[tensor_name]
        return out

    def _ggn_fields(self, taps: Taps, deltas: dict[int, Tensor]) -> dict[str, Field]:
        per_module: dict[int, dict[str, Field]] = {}
        out = {}
        for name, (module, tensor_name) in self.targets.items():
            key = id(module)
            if key not in per_module:
                rule = rule_for(module, name)
                per_module[key] = rule.square_sums(module, taps.inputs[key], deltas[key])
            out[name] = per_module[key][tensor_name]
        return out

    # ----------------------------------------------------------------- torch.func
    def _params(self) -> dict[str, Tensor]:
        return {name: getattr(m, t).detach() for name, (m, t) in self.targets.items()}

    def _autograd(self, x, y, grads, ggn, what) -> Sample:
        model, loss_fn, params = functional_model(self.model), self.loss_fn, self._params()

        def loss_n(p, xi, yi):
            return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        def dot_n(p, xi, si):
            return (functional_call(model, p, (xi.unsqueeze(0),))[0] * si).sum()

        with torch.no_grad():
            z = functional_call(model, params, (x,))
            loss = check_loss(loss_fn(z, y), what)
        out = Sample(int(x.shape[0]), float(loss) * int(x.shape[0]))
        if grads:
            g = vmap(grad(loss_n), in_dims=(None, 0, 0))(params, x, y)
            out.g = {name: Dense(g[name].detach()) for name in params}
        if ggn:  # per sample n and factor column k: (J_n^T s_nk)^2, summed over k
            factor = output_factor(loss_fn, z, y).transpose(1, 2)  # (n, K, C)
            per_k = vmap(grad(dot_n), in_dims=(None, None, 0))
            gk = vmap(per_k, in_dims=(None, 0, 0))(params, x, factor)
            out.h = {name: Dense(gk[name].detach().pow(2).sum(1)) for name in params}
        return out
