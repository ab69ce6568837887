"""``H = 2 X X^T / N`` of one tensor's inputs: the Hessian of ``||W X - W' X||^2 / N``.

Feeds layer-wise OBS (OBC / SparseGPT) and GPTQ. ``X`` has one column per input row, in the
layout of :func:`weight_matrix` (``W`` is the tensor as an (outputs, inputs) matrix):

* ``Linear``: the input vectors (extra leading dimensions flattened; of a padded text batch,
  only the real tokens' rows: :mod:`brainsurgeon.models.adapters.rows`);
* ``Conv2d``: the unfolded patches (``in*kh*kw`` long, one per output position);
* ``Embedding``: one-hot token ids, so ``X X^T`` is the diagonal of token counts;
* ``LSTM``/``GRU`` (one layer, one direction): ``weight_ih_l0`` sees the input steps,
  ``weight_hh_l0`` the previous hidden states ``h_{t-1}``;
* ``MultiheadAttention``: ``in_proj_weight`` sees the (self-attention) input; ``out_proj``,
  which its parent calls functionally, sees the attention context, recomputed in the hook.

Hooks ride on the module that runs the tensor (the parent attention for ``out_proj``), and
PyTorch's fused Transformer fast path is switched off while they listen (it skips hooks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..errors import DataError, NumericalError, UnsupportedLayerError
from ..models.adapters.rows import real_rows
from ..models.adapters.tensors import layer_kind, layout_of
from .layers import conv2d_columns

#: (owner, tensor name, args, kwargs, output) -> X^T X (cols, cols) and the row count
Gram = Callable[[nn.Module, str, tuple, dict, object], tuple[Tensor, int]]


def _gram(rows: Tensor) -> tuple[Tensor, int]:
    return rows.T @ rows, int(rows.shape[0])


def _linear(module, tensor, args, kwargs, out):
    return _gram(real_rows(args[0]))  # padding positions of a text batch left out


def _conv2d(module, tensor, args, kwargs, out):
    if module.groups != 1:
        raise UnsupportedLayerError(
            f"layer-wise statistics need groups=1 convolutions, found groups={module.groups}"
        )
    cols = conv2d_columns(module, args[0])  # (n, in*kh*kw, L)
    return _gram(cols.transpose(1, 2).reshape(-1, cols.shape[1]))


def _embedding(module, tensor, args, kwargs, out):
    ids = args[0].reshape(-1)
    counts = torch.bincount(ids, minlength=module.num_embeddings)
    return torch.diag(counts.to(module.weight.dtype)), int(ids.numel())


def _recurrent(module, tensor, args, kwargs, out):
    if module.num_layers != 1 or module.bidirectional or not isinstance(args[0], Tensor):
        raise UnsupportedLayerError(
            f"layer-wise statistics handle single-layer, unidirectional {layer_kind(module)}s "
            "on padded tensors; exclude the recurrent weights (--exclude 'rnn.weight_*') or "
            "use criterion 'obs' / 'obd'"
        )
    x = args[0]
    if tensor == "weight_ih_l0":
        return _gram(x.reshape(-1, x.shape[-1]))
    seq = out[0] if module.batch_first else out[0].transpose(0, 1)  # (n, T, h)
    h0 = out[1][0] if isinstance(out[1], tuple) else out[1]  # (1, n, h) final: use zeros
    start = torch.zeros_like(h0[0]).unsqueeze(1)
    if len(args) > 1 and args[1] is not None:
        given = args[1][0] if isinstance(args[1], tuple) else args[1]
        start = given[0].unsqueeze(1)
    prev = torch.cat([start, seq[:, :-1]], dim=1)
    return _gram(prev.reshape(-1, prev.shape[-1]))


def _attention_inputs(module: nn.MultiheadAttention, args, kwargs) -> tuple[Tensor, ...]:
    names = ("query", "key", "value")
    qkv = [args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names)]
    return tuple(qkv)


def _attention(module, tensor, args, kwargs, out):
    q, k, v = _attention_inputs(module, args, kwargs)
    if tensor in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        x = {"q": q, "k": k, "v": v}[tensor[0]]
        return _gram(x.reshape(-1, x.shape[-1]))
    if tensor == "in_proj_weight":
        if not (q is k is v or (torch.equal(q, k) and torch.equal(k, v))):
            raise UnsupportedLayerError(
                "layer-wise statistics of in_proj_weight need self-attention (query = key = "
                "value); exclude '*.in_proj_weight' for cross-attention or use 'obs' / 'obd'"
            )
        return _gram(q.reshape(-1, q.shape[-1]))
    if tensor != "out_proj":
        raise UnsupportedLayerError(f"MultiheadAttention has no input rule for {tensor!r}")
    context = _attention_context(module, q, k, v, kwargs)
    return _gram(context.reshape(-1, context.shape[-1]))


def _attention_context(module: nn.MultiheadAttention, q, k, v, kwargs) -> Tensor:
    """The attention output before ``out_proj``: the same call with an identity projection."""
    if module.batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    E = module.embed_dim
    eye = torch.eye(E, dtype=q.dtype, device=q.device)
    separate = not module._qkv_same_embed_dim
    context, _ = F.multi_head_attention_forward(
        q, k, v, E, module.num_heads, module.in_proj_weight, module.in_proj_bias,
        module.bias_k, module.bias_v, module.add_zero_attn, 0.0, eye, None,
        training=False, key_padding_mask=kwargs.get("key_padding_mask"), need_weights=False,
        attn_mask=kwargs.get("attn_mask"), use_separate_proj_weight=separate,
        q_proj_weight=module.q_proj_weight, k_proj_weight=module.k_proj_weight,
        v_proj_weight=module.v_proj_weight, is_causal=bool(kwargs.get("is_causal", False)),
    )  # fmt: skip
    return context


INPUT_RULES: dict[type[nn.Module], Gram] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    nn.Embedding: _embedding,
    nn.LSTM: _recurrent,
    nn.GRU: _recurrent,
    nn.MultiheadAttention: _attention,
}


def input_rule(module: nn.Module, name: str = "layer") -> Gram:
    for cls in type(module).__mro__:
        if cls in INPUT_RULES:
            return INPUT_RULES[cls]
    raise UnsupportedLayerError(
        f"{name} is a {layer_kind(module)} layer; layer-wise OBS / GPTQ handle "
        f"{', '.join(c.__name__ for c in INPUT_RULES)} (use criterion 'obs' or 'obd' instead)"
    )


def input_owner(model: nn.Module | None, module: nn.Module) -> tuple[nn.Module, str]:
    """The module whose forward runs ``module``'s weight, and that weight's name there:
    ``(attention, "out_proj")`` for a ``MultiheadAttention.out_proj``, else ``(module, "")``."""
    if model is not None:
        for parent in model.modules():
            if isinstance(parent, nn.MultiheadAttention) and parent.out_proj is module:
                return parent, "out_proj"
    return module, ""


def weight_matrix(module: nn.Module, tensor: str, w: Tensor) -> Tensor:
    """``w`` as the (outputs, inputs) matrix the input Hessian refers to."""
    layout = layout_of(module, tensor)
    return w.movedim(layout.out_axis, 0).reshape(w.shape[layout.out_axis], -1)


def from_matrix(module: nn.Module, tensor: str, matrix: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`weight_matrix`."""
    layout = layout_of(module, tensor)
    moved = list(shape)
    moved.insert(0, moved.pop(layout.out_axis))
    return matrix.reshape(moved).movedim(0, layout.out_axis)


@contextmanager
def hooks_visible() -> Iterator[None]:
    """Switch off the fused Transformer fast path (it bypasses submodule hooks)."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


WIDE_MAX = 2**26  # entries of X^T X summed in float64 (512 MiB); larger: in ``dtype``


class LayerInputStats:
    """Accumulates ``sum x x^T`` and the row count of one tensor's inputs.

    ``tensor``: which of ``module``'s tensors (``"weight"``, ``"weight_hh_l0"``,
    ``"in_proj_weight"``); ``owner``: the module whose forward runs it (see
    :func:`input_owner`; default ``module``). Feed it with ``update(x)`` (a plain input
    tensor) or by ``attach()`` (a forward hook; ``detach()`` removes it). ``hessian()``
    returns ``H = 2 X X^T / N`` (cols, cols) in ``dtype``.
    """

    def __init__(
        self,
        module: nn.Module,
        name: str = "layer",
        dtype: torch.dtype = torch.float32,
        *,
        tensor: str = "weight",
        owner: tuple[nn.Module, str] | None = None,
    ) -> None:
        self.module, self.name, self.dtype, self.tensor = module, name, dtype, tensor
        self.owner, self._owned = owner if owner is not None and owner[1] else (module, "")
        self._gram = input_rule(self.owner, name)
        self._handle: RemovableHandle | None = None
        self.reset()

    def reset(self) -> None:
        self.sum_: Tensor | None = None
        self.count_ = 0

    def update(self, x: Tensor) -> None:
        self._add(*self._gram(self.owner, self._owned or self.tensor, (x,), {}, None))

    def _hook(self, owner, args, kwargs, out) -> None:
        with torch.no_grad():
            args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
            self._add(*self._gram(owner, self._owned or self.tensor, args, kwargs, out))

    def _add(self, xtx: Tensor, count: int) -> None:
        xtx = xtx.to(self.sum_dtype(xtx.numel()))
        if not xtx.is_cuda:  # on a GPU checked once, in hessian(): no sync per batch
            self._check_finite(xtx)
        self.sum_ = xtx if self.sum_ is None else self.sum_ + xtx
        self.count_ += count

    def _check_finite(self, t: Tensor) -> None:
        if not bool(torch.isfinite(t).all()):
            raise NumericalError(
                f"the inputs of {self.name} contain NaN or infinite values; check the "
                "calibration data (normalisation) and the layers before it"
            )

    def sum_dtype(self, numel: int) -> torch.dtype:
        """float64 for the running sum (the order of batches or ranks then changes nothing
        at ``dtype``'s precision), unless it would exceed ``WIDE_MAX`` entries."""
        return torch.float64 if numel <= WIDE_MAX else self.dtype

    def attach(self) -> LayerInputStats:
        self.detach()
        self._handle = self.owner.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def hessian(self) -> Tensor:
        if self.sum_ is None:
            raise DataError(
                f"{self.name} saw no inputs; run calibration data through the model first"
            )
        if self.sum_.is_cuda:
            self._check_finite(self.sum_)  # NaN / inf of any batch survive the sum
        return (2.0 * self.sum_ / self.count_).to(self.dtype)
