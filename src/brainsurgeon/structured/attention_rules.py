"""Rules for attention layers: heads as units, the embedding kept (see :mod:`.rules`)."""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from .graph import Walker
from .groups import Slice


def attention_space(w: Walker, name: str, m: nn.Module) -> None:
    """Heads of a packed attention layer: q/k/v row blocks of ``in_proj`` (offsets 0, E, 2E,
    ``head_dim`` rows each) are producers, ``out_proj`` columns the consumers."""
    if m.in_proj_weight is None or getattr(m, "bias_k", None) is not None or m.add_zero_attn:
        return  # separate q/k/v projections or extra key/value biases: no head group
    hd, inner = m.head_dim, m.in_proj_weight.shape[0] // 3
    space = w.space(w.new_space(name, "head", m.num_heads))
    for t in ["in_proj_weight"] + (["in_proj_bias"] if m.in_proj_bias is not None else []):
        space.producers += [Slice(name, t, 0, hd, off) for off in (0, inner, 2 * inner)]
    space.consumers.append(Slice(f"{name}.out_proj", "weight", 1, hd))


def attention(w: Walker, node: fx.Node) -> None:
    for a in w.inputs(node):
        w.pin(a, f"feeds attention {node.target}, whose embedding size is fixed")
    attention_space(w, node.target, w.module(node))
    return None


def _encoder_spaces(w: Walker, name: str, m: nn.Module) -> None:
    attention_space(w, f"{name}.self_attn", m.self_attn)
    space = w.space(w.new_space(f"{name}.linear1", "neuron", m.linear1.out_features))
    for t in ("weight", "bias"):
        if getattr(m.linear1, t) is not None:
            space.producers.append(Slice(f"{name}.linear1", t, 0))
    space.consumers.append(Slice(f"{name}.linear2", "weight", 1))


def encoder(w: Walker, node: fx.Node) -> None:
    """nn.TransformerEncoderLayer (or a TransformerEncoder stack of them) as one layer: the
    heads and feed-forward neurons of each; the embedding is kept."""
    m, name = w.module(node), node.target
    for a in w.inputs(node):
        w.pin(a, f"feeds {name}, whose embedding size is fixed")
    if isinstance(m, nn.TransformerEncoder):
        for i, layer in enumerate(m.layers):
            _encoder_spaces(w, f"{name}.layers.{i}", layer)
    else:
        _encoder_spaces(w, name, m)
    return None
