"""What tests/test_distributed.py computes once in one process and once on 2 gloo ranks.

``compute()`` returns ``{key: tensor}``; the test compares the ranks with each other
(bit-identical) and with the one-process run (float64, relative 1e-10). The data (50
samples, batches of 8: 7 batches, the last short) splits unevenly: rank 0 gets 4 batches
(32 samples), rank 1 gets 3 (18).
"""

from __future__ import annotations

import copy
import os
import sys

import torch
from torch import nn

N, D, C, BATCH = 50, 8, 4, 8


def data():
    from brainsurgeon.data.core import Dataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return Dataset(x, y)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, C)).double()


def _targets(m):
    from brainsurgeon.curvature import layer_targets

    return layer_targets(m)


def _stats(out, m, ds) -> None:
    from brainsurgeon import curvature as cv
    from brainsurgeon.distributed import collect

    F = nn.functional.cross_entropy
    t = _targets(m)
    run = {
        "ggn": cv.GGNDiagonal(m, t, F),
        "fisher": cv.GradientStats(m, t, F),
        "hutch": cv.HutchinsonDiagonal(m, t, F, probes=3, seed=1),
        "exact": cv.ExactDiagonal(m, t, F),
        "damage": cv.DamageStats(m, t, F, chunk_size=5),
    }
    for acc in run.values():
        collect(acc, m, ds, batch_size=BATCH)
    strided = cv.HutchinsonDiagonal(m, t, F, probes=3, seed=1)
    collect(strided, m, ds, batch_size=BATCH, mode="strided")  # batches 0, 2, 4, 6 | 1, 3, 5
    out.update({f"hutch_strided/{n}": v for n, v in strided.result().items()})
    for key in ("ggn", "fisher", "hutch", "exact"):
        for name, v in run[key].result().items():
            out[f"{key}/{name}"] = v
    for name, v in run["fisher"].mean().items():
        out[f"grad/{name}"] = v
    for name, v in run["fisher"].abs_mean().items():
        out[f"absgrad/{name}"] = v
    dmg = run["damage"]
    for name in t:
        out[f"damage_mean/{name}"] = dmg.mean()[name]
        out[f"damage_sd/{name}"] = dmg.sd()[name]
    out["damage_count"] = torch.tensor(float(dmg.count_))
    out["damage_loss"] = torch.tensor(dmg.loss_sum_)
    for key, block, hessian in (("wf_exact", None, "fisher"), ("wf_blocks", 16, "ggn")):
        inv = cv.InverseFisher(m, t, F, len(ds), block_size=block, hessian=hessian)
        collect(inv, m, ds, batch_size=BATCH)
        for name, v in inv.result().diagonal().items():
            out[f"{key}/{name}"] = v


def _empty_rank(out, m, ds) -> None:
    """5 samples: one batch, so rank 1 sees nothing and contributes zeros."""
    from brainsurgeon import curvature as cv
    from brainsurgeon.data.core import Dataset
    from brainsurgeon.distributed import collect
    from brainsurgeon.pruning.criteria import make_criterion

    F, t, few = nn.functional.cross_entropy, _targets(m), Dataset(ds.x[:5], ds.y[:5])
    ggn = collect(cv.GGNDiagonal(m, t, F), m, few, batch_size=BATCH)
    dmg = collect(cv.DamageStats(m, t, F), m, few, batch_size=BATCH)
    inv = collect(cv.InverseFisher(m, t, F, len(few)), m, few, batch_size=BATCH)
    for name in t:
        out[f"few_ggn/{name}"] = ggn.result()[name]
        out[f"few_sd/{name}"] = dmg.sd()[name]
        out[f"few_wf/{name}"] = inv.result().diagonal()[name]
    for name, H in make_criterion("layerwise-obs").statistics(_ctx(m, few)).items():
        out[f"few_H/{name}"] = H


def _weights(m) -> dict[str, torch.Tensor]:
    return {n: getattr(mod, t).detach() for n, (mod, t) in _targets(m).items()}


def _ctx(m, ds):
    from brainsurgeon.pruning.step import make_context

    return make_context(
        m, _targets(m), ds, loss_fn=nn.functional.cross_entropy, batch_size=BATCH,
        seed=0, device=torch.device("cpu"), progress=False,
    )  # fmt: skip


def _solvers(out, m, ds) -> None:
    from brainsurgeon.pruning.criteria import make_criterion

    crit = make_criterion("layerwise-obs")
    for name, H in crit.statistics(_ctx(m, ds)).items():
        out[f"H/{name}"] = H
    keep = {n: w.abs() > w.abs().median() for n, w in _weights(m).items()}
    for name, w in crit.compensate(_ctx(m, ds), keep).items():
        out[f"layerobs/{name}"] = w  # layer OBS refit for a given mask, by owner rank
    for method, seq in (("sparsegpt", False), ("sparsegpt", True), ("obc", False)):
        crit = make_criterion("layerwise-obs", method=method, sequential=seq, block_size=4)
        keep, new = crit.solve(_ctx(m, ds), 0.5)
        for name in keep:
            out[f"{method}{int(seq)}_keep/{name}"] = keep[name].double()
            out[f"{method}{int(seq)}_w/{name}"] = new[name]


def _prune_and_tune(out, m, ds) -> None:
    import brainsurgeon as bs

    m = copy.deepcopy(m)
    options = {"block_size": 16, "hessian": "fisher"}
    config = bs.PruneConfig(criterion="obs", amount=0.6, criterion_options=options, samples=N)
    bs.prune(m, config, ds, device="cpu", progress=False)
    for name, (mod, t) in _targets(m).items():
        out[f"obs_w/{name}"] = getattr(mod, t).detach()
    tune = bs.TrainConfig(epochs=2, batch_size=7, lr=0.1, momentum=0.9, l2=1e-3, seed=3)
    bs.fit(m, ds, tune, device="cpu", progress=False)
    for name, (mod, t) in _targets(m).items():
        out[f"tuned_w/{name}"] = getattr(mod, t).detach()
        out[f"tuned_orig/{name}"] = getattr(mod.parametrizations, t).original.detach()


def _gptq(out, m, ds) -> None:
    """GPTQ (float64 layer-input Hessians, sharded then reduced; each rank solves)."""
    from brainsurgeon.quantization import quantize
    from brainsurgeon.quantization.methods.gptq import GPTQConfig

    for key, sequential in (("gptq", True), ("gptq_one_pass", False)):
        # sequential: block by block, each H reduced to its owner, solved there, broadcast;
        # one pass: every H at once, the ranks solve their tensors in parallel
        q = copy.deepcopy(m)
        quantize(q, GPTQConfig(bits=3, samples=N, sequential=sequential), ds, device="cpu")
        for name, (mod, t) in _targets(q).items():
            out[f"{key}/{name}"] = getattr(mod, t).detach()


def compute() -> dict[str, torch.Tensor]:
    """Every statistic, solver result and a prune + fine-tune, keyed by name."""
    from brainsurgeon.curvature import inverse

    torch.set_num_threads(1)
    inverse._TEMP_BYTES = 3 * 16 * 16 * 8  # WoodFisher chunks of 3 blocks: split over ranks
    out: dict[str, torch.Tensor] = {}
    m, ds = model(), data()
    _stats(out, m, ds)
    _empty_rank(out, m, ds)
    _solvers(out, m, ds)
    _gptq(out, m, ds)
    _prune_and_tune(out, m, ds)
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def worker(rank: int, world: int, port: int, folder: str, mode: str = "compute") -> None:
    """One rank: join the gloo group, compute, save ``rank{r}.safetensors``."""
    import datetime

    import torch.distributed as dist
    from safetensors.torch import save_file

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        if mode == "die" and rank == 1:
            os._exit(3)  # a rank that crashes: the other must fail with a clear error
        save_file(compute(), os.path.join(folder, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # python tests/_distributed_work.py RANK WORLD PORT FOLDER [MODE]
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:6])
