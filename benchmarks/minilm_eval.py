"""Measurements for benchmarks/minilm.py: data splits, embeddings, downstream scores, latency.

Data (seed 0, one permutation of the bbc-news sentences): ``eval`` (embedding agreement and
topic accuracy), ``val``, ``calib`` (512; its first 128 are the 128-sentence calibration
set; distillation text) and ``clf`` (a disjoint labelled split the downstream classifiers are
trained on, with the ORIGINAL model's embeddings). lee-sts: 50 documents, 1,225 scored pairs.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainsurgeon.data.core import DataBundle, Dataset
from brainsurgeon.data.corpora import CORPORA, fetch_corpus
from brainsurgeon.data.embeddings import teacher_embeddings
from brainsurgeon.data.sources import cache_dir
from brainsurgeon.data.text import read_texts, tokenize
from brainsurgeon.training.evaluation import embedding_agreement

MAX_LENGTH = 128


@dataclass
class Splits:
    """Token tensors (N, 2, L), teacher embeddings (N, D) and labels of every split."""

    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    lee_x: torch.Tensor
    lee_pairs: np.ndarray  # (P, 2) document indices
    lee_gold: np.ndarray  # (P,)
    sizes: dict[str, int]

    def bundle(self, calib: int) -> DataBundle:
        """Calibration = the first ``calib`` sentences of the calibration split (past its
        512: continued from the ``extra`` split, which comes after ``clf``)."""
        x, y = self.x["calib"], self.y["calib"]
        if calib > len(x) and "extra" in self.x:
            x, y = torch.cat([x, self.x["extra"]]), torch.cat([y, self.y["extra"]])
        if calib > len(x):
            raise ValueError(f"only {len(x)} calibration sentences; asked for {calib}")
        train = Dataset(x[:calib], y[:calib])
        return DataBundle(
            name="bbc-news",
            train=train,
            val=Dataset(self.x["val"], self.y["val"]),
            test=Dataset(self.x["eval"], self.y["eval"]),
            num_classes=int(self.y["eval"].shape[1]),
            normalization={"mean": 0.0, "std": 1.0},
            spec={"name": "bbc-news", "calib": calib, "seed": 0},
        )


def load_splits(teacher: nn.Module, folder, sizes: dict[str, int], seed: int = 0) -> Splits:
    """Draw the splits by seed, tokenise them and compute (or read cached) teacher embeddings."""
    table = read_texts(
        fetch_corpus("bbc-news", progress=False), **dict(CORPORA["bbc-news"].read_args)
    )
    order = np.random.default_rng(seed).permutation(len(table))
    x, y, labels, start = {}, {}, {}, 0
    for name in ("eval", "val", "calib", "clf", "extra"):  # extra: more calibration text
        if not sizes.get(name):
            continue
        rows = order[start : start + sizes[name]]
        start += sizes[name]
        part = table.take(rows)
        x[name] = tokenize(list(part.texts), folder, max_length=MAX_LENGTH)
        labels[name] = torch.tensor(part.labels)
        y[name] = cached_embeddings(teacher, x[name], name)
    lee = read_texts(fetch_corpus("lee-sts", progress=False), **dict(CORPORA["lee-sts"].read_args))
    docs = list(dict.fromkeys(lee.texts))
    index = {d: i for i, d in enumerate(docs)}
    pairs = np.array([[index[a], index[b]] for a, b in lee.pairs])
    lee_x = tokenize(docs, folder, max_length=MAX_LENGTH)
    return Splits(x, y, labels, lee_x, pairs, np.array(lee.scores), dict(sizes))


def cached_embeddings(teacher: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    key = hashlib.sha256(x.numpy().tobytes()).hexdigest()[:24]
    path = cache_dir() / "minilm-bench" / f"{name}-{key}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path))
    y = embed(teacher, x)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, y.numpy())
    tmp.replace(path)
    return y


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``model(x)`` (N, D), batched by sorted length (trimmed padding), in input order."""
    order = torch.argsort(x[:, 1].sum(1))
    out = teacher_embeddings(model, x[order], batch_size=batch_size)
    result = torch.empty_like(out)
    result[order] = out
    return result


def fit_logreg(z: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3) -> nn.Linear:
    """Multinomial logistic regression on embeddings (full-batch L-BFGS, L2 ``l2``)."""
    torch.manual_seed(0)
    clf = nn.Linear(z.shape[1], int(labels.max()) + 1).double()
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=500, line_search_fn="strong_wolfe")
    zd = z.double()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(clf(zd), labels) + l2 * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return clf


class Downstream:
    """Classifiers fitted once on the original's ``clf`` embeddings; scores any model."""

    def __init__(self, splits: Splits) -> None:
        self.splits = splits
        z, lab = splits.y["clf"], splits.labels["clf"]
        self.logreg = fit_logreg(z, lab)
        k = int(lab.max()) + 1
        self.centroids = F.normalize(torch.stack([z[lab == c].mean(0) for c in range(k)]), dim=1)

    @torch.no_grad()
    def score(self, model: nn.Module) -> dict[str, float]:
        s = self.splits
        z = embed(model, s.x["eval"])
        out = embedding_agreement(z, s.y["eval"])
        out.pop("neighbours", None)
        lab = s.labels["eval"]
        out["topic_acc_logreg"] = float((self.logreg(z.double()).argmax(1) == lab).float().mean())
        nc = (F.normalize(z, dim=1) @ self.centroids.T).argmax(1)
        out["topic_acc_centroid"] = float((nc == lab).float().mean())
        out["lee_sts_spearman"] = lee_spearman(embed(model, s.lee_x), s.lee_pairs, s.lee_gold)
        return out


def lee_spearman(z: torch.Tensor, pairs: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    zn = F.normalize(z.double(), dim=1)
    sims = (zn[pairs[:, 0]] * zn[pairs[:, 1]]).sum(1).numpy()
    return float(spearmanr(sims, gold).statistic)


def full_length_inputs(folder, batch: int, length: int = MAX_LENGTH) -> torch.Tensor:
    """(batch, 2, length) token ids of real text with every position real (mask all 1)."""
    table = read_texts(
        fetch_corpus("bbc-news", progress=False), **dict(CORPORA["bbc-news"].read_args)
    )
    texts = [" ".join(table.texts[i * 12 : (i + 1) * 12]) for i in range(batch)]
    x = tokenize(texts, folder, max_length=length)
    assert bool((x[:, 1] == 1).all()), "the latency inputs must be full length"
    return x


@torch.no_grad()
def interleaved_latency(
    dense: nn.Module, model: nn.Module, inputs: dict[int, torch.Tensor], reps: dict[int, int]
) -> dict[str, float]:
    """Median ms of ``dense`` and ``model`` timed alternately (1 thread), and dense / model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, float] = {}
    try:
        for b, x in inputs.items():
            times: dict[str, list[float]] = {"dense": [], "model": []}
            dense(x), model(x)  # warm-up
            for r in range(reps[b]):
                pair = (("dense", dense), ("model", model))
                for name, m in pair if r % 2 == 0 else pair[::-1]:
                    t = time.perf_counter()
                    m(x)
                    times[name].append(time.perf_counter() - t)
            d, m = statistics.median(times["dense"]), statistics.median(times["model"])
            out[f"dense_b{b}_ms"], out[f"b{b}_ms"] = d * 1e3, m * 1e3
            out[f"speedup_b{b}"] = d / m
    finally:
        torch.set_num_threads(threads)
    return out


def counts(model: nn.Module) -> dict[str, int]:
    """Parameters and nonzeros of the baked model (masks and quantizers applied)."""
    params = list(model.parameters())
    return {
        "parameters": sum(p.numel() for p in params),
        "nonzeros": sum(int(torch.count_nonzero(p)) for p in params),
    }
