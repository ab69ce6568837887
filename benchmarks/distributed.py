"""2 gloo processes against 1: equality on LeNet-300-100 / MNIST, speed on a wide MLP.

    python benchmarks/distributed.py [--small] [--repeats 3] [--width 4096] [--depth 8]

*Equality*: LeNet-300-100 (seeded, trained one epoch on MNIST) and its calibration set are
written to a temp folder; two ranks (``torch.distributed``, gloo, one thread each) and this
process compute the same statistics (GGN diagonal, empirical Fisher, OBD-SD's Welford
mean / sd, WoodFisher block inverse diagonal, layer-input Hessians), prune copies with
obd-sd, WoodFisher OBS and SparseGPT, and fine-tune the SparseGPT copy one epoch
(data-parallel). Reported: the largest relative difference per quantity, whether the masks
are identical, whether the ranks are bit-identical.

*Speed*: a ``depth``-layer, ``width``-wide ReLU MLP on random data; wall time of OBD-SD
statistics, WoodFisher OBS (statistics, scores and the weight update on the
``--obs-layer``) and SparseGPT (every layer, one pass of statistics) with 1 and 2
processes (1 thread each), between barriers, the two world sizes interleaved (order
alternating) ``--repeats`` times; the medians, speedup ``t1 / t2`` and efficiency
``speedup / 2``. ``os.getloadavg()`` and the machine are recorded (a shared machine
inflates both). Writes ``benchmarks/results/distributed.json`` (``--small``:
``distributed_small.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from brainsurgeon._io import write_json
from brainsurgeon.utils import environment

RESULTS = Path(__file__).resolve().parent / "results"
HERE = Path(__file__).resolve()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, task: str, folder: Path, cfg: dict) -> None:
    """Run ``task`` on ``world`` fresh processes (one thread each); wait for all."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1] / "src"), env.get("PYTHONPATH", "")])
    port, spec = _port(), json.dumps(cfg)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE),
                "--worker",
                str(r),
                str(world),
                str(port),
                task,
                str(folder),
                spec,
            ],
            env=env,
        )  # fmt: skip
        for r in range(world)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{task} on {world} processes failed: exit codes {codes}")


def _ctx(model, data, batch_size):
    from brainsurgeon.curvature import layer_targets
    from brainsurgeon.pruning.step import make_context

    return make_context(
        model, layer_targets(model), data, loss_fn=nn.functional.cross_entropy,
        batch_size=batch_size, seed=0, device=torch.device("cpu"), progress=False,
    )  # fmt: skip


# ---------------------------------------------------------------- equality (LeNet-300-100)


def lenet_and_data(cfg: dict):
    import brainsurgeon as bs
    from brainsurgeon.data.core import Dataset

    data = bs.data.load_data("mnist", progress=False)
    train = data.train.subset(cfg["train_samples"], seed=0)
    torch.manual_seed(0)
    model = bs.build_model("lenet300", data.input_shape, data.num_classes)
    bs.fit(model, train, bs.TrainConfig(epochs=1, batch_size=128, lr=0.05), progress=False)
    calib = train.subset(cfg["calib_samples"], seed=1)
    return model, Dataset(calib.x.contiguous(), calib.y.contiguous())


def equality_tensors(model, calib, cfg: dict) -> dict[str, torch.Tensor]:
    """Every statistic and pruned / fine-tuned weight the equality table compares."""
    import copy

    import brainsurgeon as bs
    from brainsurgeon import curvature as cv
    from brainsurgeon.distributed import collect
    from brainsurgeon.pruning.criteria import make_criterion

    torch.set_num_threads(1)
    out, bsz, F = {}, cfg["batch_size"], nn.functional.cross_entropy
    t = cv.layer_targets(model)
    for key, acc in (
        ("ggn", cv.GGNDiagonal(model, t, F)),
        ("fisher", cv.GradientStats(model, t, F)),
    ):
        out.update(
            {
                f"{key}/{n}": v
                for n, v in collect(acc, model, calib, batch_size=bsz).result().items()
            }
        )
    dmg = collect(cv.DamageStats(model, t, F), model, calib, batch_size=bsz)
    out.update({f"obdsd_mean/{n}": v for n, v in dmg.mean().items()})
    out.update({f"obdsd_sd/{n}": v for n, v in dmg.sd().items()})
    obs = make_criterion("obs", block_size=cfg["block"])
    inv = obs.statistics(_ctx(model, calib, bsz))
    out.update({f"woodfisher_diag/{n}": v for n, v in inv.diagonal().items()})
    H = make_criterion("layerwise-obs").statistics(_ctx(model, calib, bsz))
    out.update({f"layer_H/{n}": v for n, v in H.items()})
    runs = {"obd-sd": {}, "obs": {"block_size": cfg["block"]}, "layerwise-obs": {}}
    for name, options in runs.items():
        m = copy.deepcopy(model)
        config = bs.PruneConfig(criterion=name, amount=0.9, criterion_options=options,
                                samples=len(calib), batch_size=bsz)  # fmt: skip
        bs.prune(m, config, calib, device="cpu", progress=False)
        for n, (mod, tensor) in cv.layer_targets(m).items():
            out[f"mask_{name}/{n}"] = (getattr(mod, tensor) != 0).double()
        if name == "layerwise-obs":
            tune = bs.TrainConfig(epochs=1, batch_size=100, lr=0.01, seed=0)
            bs.fit(m, calib, tune, device="cpu", progress=False)
            for n, (mod, tensor) in cv.layer_targets(m).items():
                out[f"finetuned/{n}"] = getattr(mod, tensor).detach()
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def equality(cfg: dict, folder: Path) -> dict:
    from safetensors.torch import load_file, save_file

    model, calib = lenet_and_data(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "lenet.st"))
    save_file({"x": calib.x, "y": calib.y}, str(folder / "calib.st"))
    launch(2, "equality", folder, cfg)
    ref = equality_tensors(model, calib, cfg)
    ranks = [load_file(str(folder / f"eq{r}.st")) for r in range(2)]
    table: dict[str, dict] = {}
    for key in ref:
        kind = key.split("/")[0]
        a, b = ref[key].double(), ranks[0][key].double()
        rel = float((a - b).abs().max() / a.abs().max().clamp_min(1e-300))
        row = table.setdefault(kind, {"max_rel_diff": 0.0, "ranks_bit_identical": True})
        row["max_rel_diff"] = max(row["max_rel_diff"], rel)
        row["ranks_bit_identical"] &= torch.equal(ranks[0][key], ranks[1][key])
        if kind.startswith("mask_"):
            row["identical"] = row.get("identical", True) and torch.equal(a, b)
            row["differing_entries"] = row.get("differing_entries", 0) + int((a != b).sum())
            row["pruned"] = row.get("pruned", 0) + int((b == 0).sum())
            row["entries"] = row.get("entries", 0) + b.numel()
    for row in table.values():
        if "entries" in row:
            row["sparsity"] = round(row.pop("pruned") / row.pop("entries"), 4)
    return table


def equality_worker(rank: int, folder: Path, cfg: dict) -> None:
    from safetensors.torch import load_file, save_file

    import brainsurgeon as bs
    from brainsurgeon.data.core import Dataset

    data = load_file(str(folder / "calib.st"))
    model = bs.build_model("lenet300", (1, 28, 28), 10)
    model.load_state_dict(load_file(str(folder / "lenet.st")))
    out = equality_tensors(model, Dataset(data["x"], data["y"]), cfg)
    save_file(out, str(folder / f"eq{rank}.st"))


# ---------------------------------------------------------------- speed (wide MLP)


def wide_mlp(cfg: dict) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    w, layers = cfg["width"], []
    for _ in range(cfg["depth"] - 1):
        layers += [nn.Linear(w, w), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(w, 10))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(cfg["samples"], w, generator=g)
    return model, x, torch.randint(0, 10, (cfg["samples"],), generator=g)


def _timed(fn) -> float:
    from brainsurgeon.distributed import barrier

    barrier()
    began = time.perf_counter()
    fn()
    barrier()
    return time.perf_counter() - began


def speed_worker(rank: int, folder: Path, cfg: dict) -> None:
    from brainsurgeon import curvature as cv
    from brainsurgeon.data.core import Dataset
    from brainsurgeon.distributed import collect
    from brainsurgeon.pruning.criteria import make_criterion

    torch.set_num_threads(1)
    model, x, y = wide_mlp(cfg)
    data, bsz, F = Dataset(x, y), cfg["batch_size"], nn.functional.cross_entropy
    t = cv.layer_targets(model)
    obs_t = {cfg["obs_layer"]: t[cfg["obs_layer"]]}

    def obd_sd():
        collect(cv.DamageStats(model, t, F, chunk_size=bsz), model, data, batch_size=bsz)

    wf: dict = {}
    parts: dict[str, float] = {}

    def woodfisher():  # its three parts are also timed apart (woodfisher_* below)
        ctx = _ctx(model, data, bsz)
        ctx.targets = obs_t
        crit = make_criterion("obs", block_size=cfg["block"], hessian="fisher", chunk_size=16)
        parts["statistics"] = _timed(lambda: wf.update(stats=crit.statistics(ctx)))
        parts["scores"] = _timed(lambda: wf.update(scores=crit.score(ctx, wf["stats"])))
        keep = {n: s > s.median() for n, s in wf["scores"].items()}
        parts["update"] = _timed(lambda: crit.compensate(ctx, keep, stats=wf["stats"]))

    def sparsegpt():
        crit = make_criterion("layerwise-obs", method="sparsegpt", sequential=False)
        crit.solve(_ctx(model, data, bsz), 0.5)

    times = {name: _timed(fn) for name, fn in
             (("obd_sd_statistics", obd_sd), ("woodfisher_obs", woodfisher),
              ("sparsegpt", sparsegpt))}  # fmt: skip
    times.update({f"woodfisher_{k}": v for k, v in parts.items()})
    if rank == 0:
        (folder / "speed.json").write_text(json.dumps(times))


def speed(cfg: dict, folder: Path, repeats: int) -> dict:
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for rep in range(repeats):
        for world in (1, 2) if rep % 2 == 0 else (2, 1):
            launch(world, "speed", folder, cfg)
            runs[world].append(json.loads((folder / "speed.json").read_text()))
    out = {}
    for phase in runs[1][0]:
        t1 = statistics.median(r[phase] for r in runs[1])
        t2 = statistics.median(r[phase] for r in runs[2])
        out[phase] = {
            "seconds_1_process": round(t1, 3),
            "seconds_2_processes": round(t2, 3),
            "speedup": round(t1 / t2, 3),
            "efficiency": round(t1 / t2 / 2, 3),
            "all_seconds": {w: [round(r[phase], 3) for r in runs[w]] for w in (1, 2)},
        }
    return out


# ---------------------------------------------------------------- driver


def worker(argv: list[str]) -> None:
    """``--worker RANK WORLD PORT TASK FOLDER CFG``: join the group, run the task."""
    import datetime

    import torch.distributed as dist

    rank, world, port, task, folder, spec = argv
    rank, world, folder, cfg = int(rank), int(world), Path(folder), json.loads(spec)
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=1800),
        )  # fmt: skip
    try:
        (equality_worker if task == "equality" else speed_worker)(rank, folder, cfg)
    finally:
        if world > 1:
            dist.destroy_process_group()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="a quick check: small sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--samples", type=int, default=None, help="speed: samples of the wide MLP")
    args = p.parse_args()
    small = args.small
    eq = {"train_samples": 2000 if small else 20000, "calib_samples": 256 if small else 1024,
          "batch_size": 64 if small else 128, "block": 64 if small else 128}  # fmt: skip
    sp = {"width": args.width or (256 if small else 4096),
          "depth": args.depth or (4 if small else 8),
          "samples": args.samples or (128 if small else 512),
          "batch_size": 32 if small else 64, "block": 16 if small else 32}  # fmt: skip
    sp["obs_layer"] = f"{2 * (sp['depth'] - 2)}.weight"  # the last width x width layer
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        table = equality(eq, Path(tmp))
        timing = speed(sp, Path(tmp), 1 if small else args.repeats)
    result = {
        "benchmark": "distributed", "small": small, "world_sizes": [1, 2], "backend": "gloo",
        "threads_per_process": 1, "equality_config": eq, "speed_config": sp,
        "equality": table, "speed": timing, "loadavg": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
        "seconds": round(time.perf_counter() - began, 1), "environment": environment(),
    }  # fmt: skip
    name = "distributed_small.json" if small else "distributed.json"
    write_json(RESULTS / name, result)
    print(json.dumps({"equality": table, "speed": timing}, indent=1))


if __name__ == "__main__":
    main()
