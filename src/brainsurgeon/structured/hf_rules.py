"""Structured groups of Hugging Face encoders: attention heads and feed-forward neurons.

fx cannot trace ``transformers`` models (data-dependent masks, dict outputs), so an
:class:`~brainsurgeon.models.hf.HFEncoder` is described directly, layer by layer, for the
BERT family's layout (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, ...)::

    attention.self.{query,key,value}  rows in blocks of head_dim  -> producers of a head
    attention.output.dense            columns in blocks of head_dim -> its consumer
    intermediate.dense                rows (and bias)               -> producers of a neuron
    output.dense                      columns                       -> its consumer

The hidden size (the residual stream) is kept. transformers' BERT reshapes with ``-1``
heads, so removing head rows needs no attribute change; the edit is replayed by ``shrink``.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedLayerError
from .graph import WHOLE_MODEL_RULES, Walker
from .groups import Slice

_QKV = ("query", "key", "value")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def bert_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every BERT-style encoder layer (self-attention + FFN) in ``model``."""
    out = []
    for name, m in model.named_modules():
        att = getattr(m, "attention", None)
        if (
            att is not None
            and hasattr(getattr(att, "self", None), "query")
            and hasattr(getattr(m, "intermediate", None), "dense")
            and hasattr(getattr(m, "output", None), "dense")
        ):
            out.append((name, m))
    return out


def _head_space(w: Walker, name: str, layer: nn.Module) -> None:
    sa = layer.attention.self
    hd = int(sa.attention_head_size)
    units = sa.query.out_features // hd
    space = w.space(w.new_space(f"{name}.attention", "head", units))
    for proj in _QKV:
        module = f"{name}.attention.self.{proj}"
        space.producers.append(Slice(module, "weight", 0, hd))
        if getattr(sa, proj).bias is not None:
            space.producers.append(Slice(module, "bias", 0, hd))
    space.consumers.append(Slice(f"{name}.attention.output.dense", "weight", 1, hd))


def _ffn_space(w: Walker, name: str, layer: nn.Module) -> None:
    inter = layer.intermediate.dense
    space = w.space(w.new_space(f"{name}.intermediate.dense", "neuron", inter.out_features))
    space.producers.append(Slice(f"{name}.intermediate.dense", "weight", 0))
    if inter.bias is not None:
        space.producers.append(Slice(f"{name}.intermediate.dense", "bias", 0))
    space.consumers.append(Slice(f"{name}.output.dense", "weight", 1))


def hf_encoder_spaces(w: Walker, prefix: str, model: nn.Module) -> None:
    """Head and FFN-neuron groups of every encoder layer of ``model`` (named under ``prefix``)."""
    layers = bert_layers(model)
    if not layers:
        raise UnsupportedLayerError(
            f"{type(getattr(model, 'backbone', model)).__name__} has no BERT-style encoder "
            "layers (attention.self.query/key/value, intermediate.dense, output.dense); "
            "structured pruning of Hugging Face models supports the BERT family; use "
            "element pruning or quantization for this one"
        )
    for name, layer in layers:
        _head_space(w, _join(prefix, name), layer)
        _ffn_space(w, _join(prefix, name), layer)


def _hf_encoder_node(w: Walker, node) -> None:
    for a in w.inputs(node):
        w.pin(a, f"feeds {node.target}, a Hugging Face encoder")
    hf_encoder_spaces(w, node.target, w.module(node))
    return None


def register() -> None:
    """Install the rules (called when transformers is first used)."""
    from ..models.hf import HFEncoder
    from .rules import MODULE_RULES

    WHOLE_MODEL_RULES[HFEncoder] = hf_encoder_spaces
    MODULE_RULES[HFEncoder] = _hf_encoder_node
