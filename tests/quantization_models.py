"""Tiny models beyond Linear/Conv for the quantization tests (built by spec, so runs reload).

``build_model("quantization_models:transformer", (5,), 3)``: token ids (n, 5) -> Embedding ->
one TransformerEncoder layer -> mean over tokens -> Linear. ``...:lstm``: (n, 6, 4) -> LSTM
-> last step -> Linear.
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 16


class TinyTransformer(nn.Module):
    def __init__(self, num_classes: int, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


class TinyLSTM(nn.Module):
    def __init__(self, features: int, num_classes: int, hidden: int = 8) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def transformer(input_shape, num_classes: int) -> nn.Module:
    return TinyTransformer(num_classes)


def lstm(input_shape, num_classes: int) -> nn.Module:
    return TinyLSTM(input_shape[-1], num_classes)
