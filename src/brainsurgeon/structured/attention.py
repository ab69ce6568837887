"""Multi-head attention with fewer heads than its embedding size allows.

``nn.MultiheadAttention`` ties ``num_heads * head_dim`` to the embedding size ``E`` of its
input and output, so it cannot lose a head. :class:`SlimMultiheadAttention` keeps ``E`` at
the boundary and ``H' * head_dim`` inside: ``in_proj_weight`` (3 H' hd, E), ``out_proj``
Linear(H' hd -> E). Its ``forward`` takes the arguments of ``nn.MultiheadAttention`` and
returns ``(output, weights or None)``; ``_qkv_same_embed_dim`` is False so
``nn.TransformerEncoderLayer`` takes its ordinary (non-fused) path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SlimMultiheadAttention(nn.Module):
    """Attention with ``num_heads`` heads of ``head_dim`` over ``embed_dim`` features."""

    _qkv_same_embed_dim = False
    bias_k = bias_v = None
    add_zero_attn = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def like(cls, mha: nn.Module) -> SlimMultiheadAttention:
        """A placeholder with ``mha``'s sizes and options (weights zero)."""
        return cls(
            mha.embed_dim,
            mha.num_heads,
            mha.head_dim,
            bias=mha.in_proj_bias is not None,
            dropout=mha.dropout,
            batch_first=mha.batch_first,
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        q, k, v = (
            x.unsqueeze(1 if not self.batch_first else 0) if unbatched else x
            for x in (query, key, value)
        )
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            q, k, v = (x.transpose(0, 1) for x in (q, k, v))
        weights = self.in_proj_weight.chunk(3)
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = (
            self._heads(F.linear(x, wt, b))
            for x, wt, b in zip((q, k, v), weights, biases, strict=True)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (N, H, L, S)
        scores = scores + self._bias(attn_mask, key_padding_mask, is_causal, scores)
        attn = torch.softmax(scores, dim=-1)
        attn = F.dropout(attn, self.dropout, self.training)
        out = (attn @ v).transpose(1, 2).flatten(2)  # (N, L, H' hd)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
        if not need_weights:
            return out, None
        attn = attn.mean(1) if average_attn_weights else attn
        return out, attn.squeeze(0) if unbatched else attn

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def _bias(attn_mask, key_padding_mask, is_causal, scores) -> torch.Tensor:
        """The additive mask (0 or -inf) from a float/bool attention and padding mask."""
        bias = torch.zeros_like(scores)
        n, _, length, s = scores.shape
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, s, dtype=torch.bool, device=scores.device).triu(1)
        for mask, shape in ((attn_mask, None), (key_padding_mask, (n, 1, 1, s))):
            if mask is None:
                continue
            if mask.dim() == 3:  # (N * H, L, S)
                mask = mask.view(n, -1, length, s)
            mask = mask.view(shape) if shape else mask
            if mask.dtype == torch.bool:
                mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(mask, float("-inf"))
            bias = bias + mask
        return bias
