"""FLOPs, energy, latency and inspection of recurrent, attention and embedding models,
against hand-computed counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainsurgeon.metrics import count_macs, inspect_model, measure_latency, summarize
from brainsurgeon.metrics.energy import energy_report
from brainsurgeon.pruning.masks import set_mask

E, HEADS, FF, T, VOCAB = 16, 2, 32, 5, 50


class TokenEncoder(nn.Module):
    """Embedding -> one TransformerEncoderLayer -> mean over tokens -> Linear(E, 3)."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batch_first = batch_first
        self.emb = nn.Embedding(VOCAB, E)
        layer = nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.0, batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(E, 3)

    def forward(self, ids: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        h = self.emb(ids)
        if scale is not None:
            h = h * scale
        if not self.batch_first:
            return self.head(self.enc(h.transpose(0, 1)).mean(0))
        return self.head(self.enc(h).mean(1))


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], **kw) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = cell(8, 16, batch_first=True, **kw)
        out = 16 * (2 if kw.get("bidirectional") else 1)
        self.fc = nn.Linear(out, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


ATTENTION = 3 * T * E * E + 2 * T * T * E  # q/k/v projections, QK^T and AV
HAND = {
    "enc.layers.0.self_attn": ATTENTION,
    "enc.layers.0.self_attn.out_proj": T * E * E,
    "enc.layers.0.linear1": T * E * FF,
    "enc.layers.0.linear2": T * FF * E,
    "head": E * 3,
}


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_flops_by_hand_from_token_ids(batch_first):
    model = TokenEncoder(batch_first)
    ids = torch.randint(0, VOCAB, (4, T))  # a batch: the first sample is counted
    s = summarize(model, ids)
    rows = {r["name"]: r for r in s["layers"]}
    assert {n: rows[n]["macs"] for n in HAND} == HAND
    assert rows["emb"]["macs"] == 0 and rows["emb"]["lookups"] == T
    assert rows["emb"]["kind"] == "Embedding"
    assert s["totals"]["flops"] == 2 * sum(HAND.values()) and s["totals"]["lookups"] == T


def test_dict_and_shape_examples_give_the_same_counts():
    model = TokenEncoder()
    ids = torch.randint(0, VOCAB, (1, T))
    by_ids = count_macs(model, ids)
    assert count_macs(model, {"ids": ids, "scale": torch.ones(1)}) == by_ids
    assert count_macs(model, (T,)) == by_ids  # zeros of that shape, as token ids


def test_zero_weights_lower_only_the_nonzero_count():
    model = TokenEncoder()
    keep = torch.zeros(FF, E, dtype=torch.bool)
    keep[:, :4] = True  # a quarter of linear1 kept
    set_mask(model.enc.layers[0].linear1, "weight", keep)
    with torch.no_grad():
        model.enc.layers[0].self_attn.in_proj_weight[:E].zero_()  # the query projection
    macs = count_macs(model, (T,))
    assert macs["enc.layers.0.linear1"] == [T * E * FF, T * FF * 4]
    assert macs["enc.layers.0.self_attn"] == [ATTENTION, ATTENTION - T * E * E]


@pytest.mark.parametrize(
    "cell, kw, per_step",
    [
        (nn.LSTM, {}, 4 * (8 * 16 + 16 * 16)),
        (nn.GRU, {}, 3 * (8 * 16 + 16 * 16)),
        (nn.RNN, {}, 8 * 16 + 16 * 16),
        # two layers, both directions: layer 2 reads the 32 concatenated hidden values
        (
            nn.LSTM,
            {"num_layers": 2, "bidirectional": True},
            2 * 4 * (8 * 16 + 16 * 16 + 32 * 16 + 16 * 16),
        ),
    ],
)
def test_recurrent_flops_per_time_step(cell, kw, per_step):
    model = Recurrent(cell, **kw)
    s = summarize(model, torch.randn(3, T, 8))
    rnn, fc = s["layers"]
    assert rnn["macs"] == T * per_step and rnn["kind"] == cell.__name__
    assert fc["macs"] == fc["shape"][0] * fc["shape"][1]
    assert s["totals"]["flops"] == 2 * (T * per_step + fc["macs"])


def test_energy_rows_cover_recurrent_and_attention_layers():
    rep = energy_report(Recurrent(nn.LSTM), (T, 8))
    lstm = rep["layers"][0]
    assert (lstm["type"], lstm["macs"], lstm["positions"]) == ("LSTM", T * 4 * 384, T)
    assert lstm["weights"] == 4 * 384 and lstm["params"] == 4 * 384 + 2 * 4 * 16
    names = [r["name"] for r in energy_report(TokenEncoder(), (T,))["layers"]]
    assert names == [
        "emb",
        "enc.layers.0.self_attn",
        "enc.layers.0.self_attn.out_proj",
        "enc.layers.0.linear1",
        "enc.layers.0.linear2",
        "head",
    ]


def test_inspect_an_embedding_transformer_with_token_ids():
    model = TokenEncoder()
    out = inspect_model(model, torch.randint(0, VOCAB, (2, T)))
    assert out["totals"]["flops"] == 2 * sum(HAND.values())
    every = dict(model.named_parameters())
    assert out["parameters"]["params"] == sum(p.numel() for p in every.values())
    compressible = {
        "emb.weight",
        "head.weight",
        "enc.layers.0.linear1.weight",
        "enc.layers.0.linear2.weight",
        "enc.layers.0.self_attn.in_proj_weight",
        "enc.layers.0.self_attn.out_proj.weight",
    }
    assert out["compressible"]["params"] == sum(every[n].numel() for n in compressible)
    dense = {d["name"]: d for d in out["left_dense"]}
    assert set(dense) == set(every) - compressible
    assert (
        dense["enc.layers.0.norm1.weight"]["reason"] == "LayerNorm has no layout rule for 'weight'"
    )
    assert dense["head.bias"]["params"] == 3 and "bias" in dense["head.bias"]["reason"]


def test_latency_with_token_ids():
    lat = measure_latency(
        TokenEncoder(), torch.randint(0, VOCAB, (1, T)), batch_sizes=(1, 2), min_run_time=0.01
    )
    assert lat["batch_1_ms"] > 0 and lat["batch_2_ms"] > 0
