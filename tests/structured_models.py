"""Tiny models with one coupling pattern each, for the structured tests (built by spec, so
runs reload): ``build_model("structured_models:residual", (6,), 3)``."""

from __future__ import annotations

import math

import torch
from torch import nn

from brainsurgeon import build_model


class Residual(nn.Module):
    """fc_in -> ReLU -> (fc_a -> ReLU -> fc_b) + skip -> ReLU -> fc_out: fc_in and fc_b
    produce the same units."""

    def __init__(self, n_in: int, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.fc_in, self.fc_a = nn.Linear(n_in, width), nn.Linear(width, 12)
        self.fc_b, self.fc_out = nn.Linear(12, width), nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc_in(x))
        h = torch.relu(h + self.fc_b(torch.relu(self.fc_a(h))))
        return self.fc_out(h)


class ConvFlatten(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU-flatten-Linear-ReLU-Linear on (1, 6, 6)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.BatchNorm2d(5)
        self.fc1, self.fc2 = nn.Linear(5 * 3 * 3, 7), nn.Linear(7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


class Concat(nn.Module):
    """Two conv branches concatenated on channels (with the input) -> conv -> pool -> fc."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(channels, 4, 3, padding=1), nn.Conv2d(channels, 5, 1)
        self.bn = nn.BatchNorm2d(4 + 5 + channels)
        self.mix = nn.Conv2d(4 + 5 + channels, 6, 1)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), self.b(x), x], dim=1)
        y = torch.relu(self.mix(self.bn(y)))
        return self.fc(y.mean((2, 3)))


class Attention(nn.Module):
    """(N, L, F) -> proj -> self-attention (+ residual) -> mean over tokens -> fc."""

    def __init__(self, n_features: int, num_classes: int, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.proj = nn.Linear(n_features, 8)
        self.attn = nn.MultiheadAttention(8, 4, batch_first=batch_first)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = h + self.attn(h, h, h)[0]
        return self.fc(h.mean(1 if self.batch_first else 0))


class Encoder(nn.Module):
    """(N, L, F) -> proj -> TransformerEncoderLayer (2 heads, FFN 16) -> mean -> fc."""

    def __init__(self, n_features: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_features, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer(self.proj(x)).mean(1))


class Stack(nn.Module):
    """(N, L, F) -> proj -> TransformerEncoder of 2 layers -> mean -> fc."""

    def __init__(self, n_features: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_features, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.proj(x)).mean(1))


class Norm(nn.Module):
    """fc1 -> LayerNorm over its units -> ReLU -> fc2."""

    def __init__(self, n_in: int, num_classes: int) -> None:
        super().__init__()
        self.fc1, self.ln, self.fc2 = (
            nn.Linear(n_in, 12),
            nn.LayerNorm(12),
            nn.Linear(12, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.ln(self.fc1(x))))


def residual(input_shape, num_classes):
    return Residual(math.prod(input_shape), num_classes)


def conv_flatten(input_shape, num_classes):
    return ConvFlatten(input_shape[0], num_classes)


def concat(input_shape, num_classes):
    return Concat(input_shape[0], num_classes)


def attention(input_shape, num_classes, batch_first: bool = True):
    return Attention(input_shape[-1], num_classes, batch_first)


def encoder(input_shape, num_classes):
    return Encoder(input_shape[-1], num_classes)


def stack(input_shape, num_classes):
    return Stack(input_shape[-1], num_classes)


def norm(input_shape, num_classes):
    return Norm(math.prod(input_shape), num_classes)


# -- helpers shared by the structured tests -------------------------------------------
PATTERNS = {  # spec, input shape, example batch shape
    "mlp": ("mlp:64-32-16-10", (64,), (5, 64)),
    "conv_flatten": ("structured_models:conv_flatten", (1, 6, 6), (5, 1, 6, 6)),
    "lenet5": ("lenet5", (1, 8, 8), (5, 1, 8, 8)),
    "residual": ("structured_models:residual", (6,), (5, 6)),
    "resnet8": ("resnet8", (1, 8, 8), (5, 1, 8, 8)),
    "concat": ("structured_models:concat", (2, 5, 5), (5, 2, 5, 5)),
    "attention": ("structured_models:attention", (4, 6), (5, 4, 6)),
    "encoder": ("structured_models:encoder", (4, 6), (5, 4, 6)),
    "stack": ("structured_models:stack", (4, 6), (5, 4, 6)),
}


def built(pattern: str, **kwargs):
    spec, shape, batch = PATTERNS[pattern]
    torch.manual_seed(0)
    model = build_model(spec, shape, 10, kwargs).eval()
    return model, torch.randn(batch)


def by_name(groups):
    return {g.name: g for g in groups}


def random_keeps(groups, seed: int = 0) -> dict:
    """A random keep per group removing about half its units (always keeping one)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for g in groups:
        keep = torch.rand(g.units, generator=gen) < 0.5
        keep[torch.randint(g.units, (1,), generator=gen)] = True
        out[g] = keep
    return out


def expected_numel(model: nn.Module, keeps: dict) -> int:
    """Parameter count after removing the units (counted from the slices)."""
    removed: dict = {}
    for g, keep in keeps.items():
        gone = (~keep).nonzero().flatten()
        for s in g.slices():
            removed.setdefault((s.module, s.tensor), {}).setdefault(s.axis, set()).update(
                s.indices(gone).tolist()
            )
    total = 0
    for name, p in model.named_parameters():
        module, _, tensor = name.rpartition(".")
        axes = removed.get((module, tensor), {})
        total += math.prod(n - len(axes.get(i, ())) for i, n in enumerate(p.shape))
    return total
