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

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..errors import ConfigError, UnsupportedLayerError
from .fields import Dense, Field
from .layers import Taps, Targets, functional_model, rule_for
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
    """``backend(x, y, grads=True, ggn=False) -> Sample`` for the tensors in ``targets``.

    ``method="rules"`` uses the layer rules for every tensor a rule covers and whose layer's
    forward hook sees it run once per pass; every other tensor (LSTM/GRU weights, attention
    projections, embeddings, a Linear its parent calls functionally such as
    ``MultiheadAttention.out_proj``, shared layers) goes through the torch.func path, so
    every tensor gets exact per-sample statistics. ``method="autograd"`` uses torch.func for
    all of them.
    """

    def __init__(
        self, model: nn.Module, targets: Targets, loss_fn: LossFn, method: str = "rules"
    ) -> None:
        self.model, self.targets, self.loss_fn = model, dict(targets), loss_fn
        self.method = check_method(method)
        if not self.targets:
            raise ConfigError("no tensors to collect statistics for (targets is empty)")
        ruled = self.targets if self.method == "rules" else {}
        self.rule_targets = {n: t for n, t in ruled.items() if has_rule(*t)}
        self.func_targets = {n: t for n, t in self.targets.items() if n not in self.rule_targets}
        self.taps = Taps(self.rule_targets)
        self._checked = not self.rule_targets
        self._plain: nn.Module | None = None
        self._loop = False  # per-sample loop instead of vmap (set on the first refusal)

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        grads: bool = True,
        ggn: bool = False,
        what: str = "statistics",
    ) -> Sample:
        if not self._checked:
            self._route_unseen(x)
        parts = []
        if self.rule_targets:
            parts.append(self._rules(x, y, grads, ggn, what))
        if self.func_targets:
            parts.append(self._autograd(x, y, grads, ggn, what))
        return _merge(parts)

    def _route_unseen(self, x: Tensor) -> None:
        """Move tensors whose layer the hooks do not see (run 0 or 2+ times) to torch.func."""
        with torch.no_grad(), self.taps.recording() as taps:
            self.model(x[:1])
        unseen = set(taps.missing()) | set(taps.repeated())
        for name, (module, _) in list(self.rule_targets.items()):
            if self.taps.names[id(module)] in unseen:
                self.func_targets[name] = self.rule_targets.pop(name)
        self.taps = Taps(self.rule_targets)
        self._checked = True

    # ----------------------------------------------------------------- layer rules
    def _rules(self, x, y, grads, ggn, what) -> Sample:
        with torch.enable_grad(), self.taps.recording() as taps:
            z = self.model(x)
        keys = list(taps.outputs)
        outs = [taps.outputs[k] for k in keys]
        loss_sum, v = output_gradients(self.loss_fn, z, y, what)
        out = Sample(int(x.shape[0]), float(loss_sum))
        if grads:
            deltas = torch.autograd.grad(z, outs, v, retain_graph=ggn)
            out.g = self._fields(taps, dict(zip(keys, deltas, strict=True)))
        if ggn:
            factor = output_factor(self.loss_fn, z, y).permute(2, 0, 1).contiguous()
            # one backward pass per factor column (cheaper than is_grads_batched's vmap on
            # CPU), GGN_CHUNK columns at a time: the output gradients of every layer for all
            # K columns at once do not fit in memory for a wide-output sequence model
            for start in range(0, len(factor), GGN_CHUNK):
                chunk = factor[start : start + GGN_CHUNK]
                per_k = [torch.autograd.grad(z, outs, f, retain_graph=True) for f in chunk]
                batched = [torch.stack(d) for d in zip(*per_k, strict=True)]  # (k, n, ...)
                part = self._ggn_fields(taps, dict(zip(keys, batched, strict=True)))
                out.h = part if out.h is None else _add_fields(out.h, part)
        return out

    def _fields(self, taps: Taps, deltas: dict[int, Tensor]) -> dict[str, Field]:
        out = {}
        for name, (module, tensor_name) in self.rule_targets.items():
            key = id(module)
            fields = rule_for(module, name).fields(module, taps.inputs[key], deltas[key])
            out[name] = fields[tensor_name]
        return out

    def _ggn_fields(self, taps: Taps, deltas: dict[int, Tensor]) -> dict[str, Field]:
        per_module: dict[int, dict[str, Field]] = {}
        out = {}
        for name, (module, tensor_name) in self.rule_targets.items():
            key = id(module)
            if key not in per_module:
                rule = rule_for(module, name)
                per_module[key] = rule.square_sums(module, taps.inputs[key], deltas[key])
            out[name] = per_module[key][tensor_name]
        return out

    # ----------------------------------------------------------------- torch.func
    def _params(self) -> dict[str, Tensor]:
        return {name: getattr(m, t).detach() for name, (m, t) in self.func_targets.items()}

    def _functional(self) -> nn.Module:
        """The plain copy torch.func runs on (made once: statistics never change the model)."""
        if self._plain is None:
            self._plain = functional_model(self.model)
        return self._plain

    def _autograd(self, x, y, grads, ggn, what) -> Sample:
        model, loss_fn, params = self._functional(), self.loss_fn, self._params()

        def loss_n(p, xi, yi):
            return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        def dot_n(p, xi, si):
            return (functional_call(model, p, (xi.unsqueeze(0),))[0] * si).sum()

        with torch.no_grad():
            z = functional_call(model, params, (x,))
            loss = check_loss(loss_fn(z, y), what)
        out = Sample(int(x.shape[0]), float(loss) * int(x.shape[0]))
        with warnings.catch_warnings():  # RNNs have no vmap rule: torch loops, and says so
            warnings.filterwarnings("ignore", message=".*[Bb]atching rule.*")
            if grads:
                g = self._per_sample(grad(loss_n), (params, x, y), (None, 0, 0))
                out.g = {name: Dense(g[name].detach()) for name in params}
            if ggn:  # per sample n and factor column k: (J_n^T s_nk)^2, summed over k
                factor = output_factor(loss_fn, z, y).transpose(1, 2)  # (n, K, C)
                per_k = vmap(grad(dot_n), in_dims=(None, None, 0))
                gk = self._per_sample(per_k, (params, x, factor), (None, 0, 0))
                out.h = {name: Dense(gk[name].detach().pow(2).sum(1)) for name in params}
        return out

    def _per_sample(self, fn, args, in_dims) -> dict[str, Tensor]:
        """``vmap(fn)`` over samples; a plain loop where a layer has no batching rule."""
        if not self._loop:
            try:
                return vmap(fn, in_dims=in_dims)(*args)
            except RuntimeError as err:  # e.g. aten::lstm under vmap with some shapes
                if "atch" not in str(err) and "shape" not in str(err):
                    raise
                self._loop = True
        n = next(a for a, d in zip(args, in_dims, strict=True) if d == 0).shape[0]
        rows = [
            fn(*(a if d is None else a[i] for a, d in zip(args, in_dims, strict=True)))
            for i in range(n)
        ]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def has_rule(module: nn.Module, tensor_name: str) -> bool:
    """True when a layer rule covers ``module.<tensor_name>`` (and accepts the module)."""
    try:
        rule = rule_for(module, tensor_name)
    except UnsupportedLayerError:
        return False
    return tensor_name in rule.tensors


def _merge(parts: list[Sample]) -> Sample:
    """One Sample from the rules part and the torch.func part (same batch, same loss)."""
    if len(parts) == 1:
        return parts[0]
    first, second = parts
    merged = Sample(first.n, first.loss_sum)
    if first.g is not None:
        merged.g = {**first.g, **second.g}
    if first.h is not None:
        merged.h = {**first.h, **second.h}
    return merged


#: factor columns backpropagated together by the layer rules (see ``_rules``)
GGN_CHUNK = 16


def _add_fields(a: dict[str, Field], b: dict[str, Field]) -> dict[str, Field]:
    """Per-sample square sums of two chunks of factor columns, added (as dense fields)."""
    return {t: Dense(a[t].dense().g + b[t].dense().g) for t in a}
