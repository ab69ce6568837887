"""torch.distributed (gloo, 2 processes on CPU) against one process on the same data.

The 2-rank results come from ``tests/_distributed_work.py`` run as two subprocesses; the
one-process reference is the same ``compute()`` here. Everything: relative 1e-10 (the
model is float64; the layer-wise solvers work in float32 on Hessians whose sums are kept in
float64, so they come out bit-identical here). Masks: identical. The ranks: bit-identical
to each other.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import brainsurgeon.distributed as parallel
from brainsurgeon.distributed.layers import assign, solve_cost

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _ranks(folder: Path, mode: str = "compute") -> list[subprocess.Popen]:
    port, script = _port(), str(HERE / "_distributed_work.py")
    return [
        subprocess.Popen(
            [sys.executable, script, str(r), "2", str(port), str(folder), mode],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """``(one_process, rank0, rank1)`` dicts of every computed tensor."""
    from safetensors.torch import load_file

    import _distributed_work as work

    folder = tmp_path_factory.mktemp("ranks")
    procs = _ranks(folder)
    ref = work.compute()  # meanwhile, in this process (no process group)
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    return ref, *(load_file(str(folder / f"rank{r}.safetensors")) for r in range(2))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-300))


STATS = ("ggn", "fisher", "grad", "absgrad", "hutch", "hutch_strided", "exact")
STATS = (*STATS, "damage_mean", "damage_sd")


PREFIXES = [*STATS, "wf_exact", "wf_blocks", "H", "few_", "gptq", "gptq_one_pass", "layerobs"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_two_ranks_equal_one_process(results, prefix):
    ref, r0, _ = results
    keys = [k for k in ref if k.startswith(prefix + ("" if prefix.endswith("_") else "/"))]
    assert keys
    for k in keys:
        assert _rel(ref[k], r0[k]) < 1e-10, (k, _rel(ref[k], r0[k]))


def test_counts_and_losses_are_exact_sums(results):
    ref, r0, _ = results
    assert float(r0["damage_count"]) == float(ref["damage_count"]) == 50
    assert _rel(ref["damage_loss"], r0["damage_loss"]) < 1e-12


def test_ranks_are_bit_identical(results):
    _, r0, r1 = results
    assert set(r0) == set(r1)
    assert [k for k in r0 if not torch.equal(r0[k], r1[k])] == []


@pytest.mark.parametrize("solver", ["sparsegpt0", "sparsegpt1", "obc0"])
def test_layerwise_solvers_same_masks_and_weights(results, solver):
    ref, r0, _ = results
    for k in [k for k in ref if k.startswith(f"{solver}_keep/")]:
        assert torch.equal(ref[k], r0[k]), k
        assert 0.45 < 1 - float(r0[k].mean()) < 0.55
        w = k.replace("_keep/", "_w/")
        assert _rel(ref[w], r0[w]) < 1e-10
        assert bool((r0[w][r0[k] == 0] == 0).all())


def test_obs_prune_then_fine_tune_like_one_process(results):
    """WoodFisher OBS masks identical; 2 epochs of data-parallel SGD (batches of 7 split 3 +
    4, the last batch of 1 row leaving rank 0 empty) equal one process; pruned stay 0."""
    ref, r0, r1 = results
    for k in [k for k in ref if k.startswith("obs_w/")]:
        assert torch.equal(ref[k] == 0, r0[k] == 0), k
        assert _rel(ref[k], r0[k]) < 1e-10
        tuned = k.replace("obs_w/", "tuned_w/")
        assert _rel(ref[tuned], r0[tuned]) < 1e-10
        assert not torch.equal(r0[tuned], r0[k])  # it did train
        for r in (r0, r1):
            assert bool((r[tuned][ref[k] == 0] == 0).all())


def test_dead_rank_fails_the_other_fast(tmp_path):
    began = time.perf_counter()
    procs = _ranks(tmp_path, mode="die")
    outs = [p.communicate(timeout=90) for p in procs]
    assert procs[1].returncode == 3
    assert procs[0].returncode != 0
    assert "DistributedError" in outs[0][1] or "failed" in outs[0][1]
    assert time.perf_counter() - began < 90


def test_alone_everything_is_a_no_op():
    assert not parallel.active() and parallel.world_size() == 1 and parallel.is_main()
    t = torch.arange(3.0)
    assert parallel.sum_(t) is t
    assert parallel.describe("cpu") == {"world_size": 1, "backend": None, "device": "cpu"}


def test_batch_sharding_covers_every_batch_once():
    for n_batches in (0, 1, 5, 7, 12):
        for world in (1, 2, 3, 5):
            for mode in ("contiguous", "strided"):
                ranks = parallel.batch_ranks(n_batches, world, mode)
                assert len(ranks) == n_batches and all(0 <= r < world for r in ranks)
            if n_batches:
                counts = [parallel.batch_ranks(n_batches, world).count(r) for r in range(world)]
                assert max(counts) - min(counts) <= 1
    assert parallel.batch_ranks(5, 2) == [0, 0, 0, 1, 1]


def test_layers_are_balanced_by_cost():
    costs = {f"l{i}": solve_cost(4096, 4096) for i in range(8)}
    owners = assign(costs, 2)
    assert sorted(owners.values()) == [0, 0, 0, 0, 1, 1, 1, 1]
    big = {"a": 10.0, "b": 9.0, "c": 5.0, "d": 4.0, "e": 1.0}
    owners = assign(big, 2)
    load = [sum(c for n, c in big.items() if owners[n] == r) for r in range(2)]
    assert max(load) == 15.0


def test_unknown_accumulator_is_refused_when_distributed(monkeypatch):
    from brainsurgeon.errors import ConfigError

    monkeypatch.setattr(parallel.group, "active", lambda: True)
    with pytest.raises(ConfigError, match="register_reducer"):
        parallel.reduce(object())


def _masks(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(run / "model.safetensors")).items() if "mask" in k}


def test_cli_under_torchrun_matches_one_process(tmp_path):
    from brainsurgeon.cli.main import main

    base = tmp_path / "base"
    train = ["train", "--model", "mlp:64-32-10", "--data", "digits", "--epochs", "1", "--quiet"]
    assert main([*train, "--out", str(base), "--device", "cpu"]) == 0
    args = ["prune", str(base), "--criterion", "obd-sd", "--amount", "0.7", "--samples", "300"]
    args += ["--batch-size", "64", "--finetune-epochs", "1", "--finetune-batch-size", "50"]
    args += ["--quiet", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    cmd += ["2", "-m", "brainsurgeon", *args, "--out", str(two)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m1, m2 = _masks(one), _masks(two)
    assert m1 and m1.keys() == m2.keys()
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    config = json.loads((two / "config.json").read_text())
    assert (config["world_size"], config["backend"], config["device"]) == (2, "gloo", "cpu")
    assert json.loads((one / "config.json").read_text())["world_size"] == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert main([*args, "--out", str(two), "--resume"]) == 0  # another world size: fine
    assert _masks(two).keys() == m2.keys()


def test_cuda_without_gpu_under_torchrun_is_a_clear_error(monkeypatch, tmp_path, capsys):
    from brainsurgeon.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(_port()))
    code = main(["prune", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert code == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not parallel.active()


def test_torchrun_env_without_master_is_a_clear_error(monkeypatch):
    from brainsurgeon.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        parallel.init_from_env("cpu")
