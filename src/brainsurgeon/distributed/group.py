"""The process group: who we are, how many we are, and collectives that fail loudly.

Everything in brainsurgeon that talks to :mod:`torch.distributed` goes through here. A run
is *distributed* when the default process group is initialised with more than one process
(``torchrun`` + :func:`init_from_env`, or the caller's own ``init_process_group``); otherwise
every helper is a no-op and single-process code runs unchanged.

Collectives are deterministic and leave every rank with bit-identical tensors:
:func:`sum_` reduces to rank 0 (fixed order) and broadcasts, never an all-reduce whose
summation order could differ between ranks. A failed peer or a timeout surfaces as a
:class:`DistributedError` naming the operation, not a hang or a raw backend traceback.
"""

from __future__ import annotations

import datetime
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import BrainsurgeonError, ConfigError

DEFAULT_TIMEOUT_S = 300.0


class DistributedError(BrainsurgeonError):
    """A peer process failed, timed out, or disagrees about the work (different data)."""


def active() -> bool:
    """True when a default process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one rank that prints and writes."""
    return rank() == 0


def backend() -> str | None:
    return str(dist.get_backend()) if active() else None


def describe(device: torch.device | str | None = None) -> dict[str, object]:
    """``{"world_size", "backend", "device"}``: what a run's ``config.json`` records."""
    return {
        "world_size": world_size(),
        "backend": backend(),
        "device": None if device is None else str(device),
    }


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset): set by ``torchrun``."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with "
            "torchrun --nproc-per-node N"
        ) from None


def init_from_env(device: str = "cpu", timeout_s: float | None = None) -> bool:
    """Initialise the default group from ``torchrun``'s environment when ``WORLD_SIZE > 1``.

    Backend ``gloo`` on CPU, ``nccl`` on CUDA (one GPU a rank: ``cuda:LOCAL_RANK``).
    ``timeout_s`` (default ``BRAINSURGEON_DIST_TIMEOUT`` or 300 s) bounds every collective,
    so a dead or stuck peer ends the run with an error. Returns True if it initialised.
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={env_world_size()} but {', '.join(missing)} unset; launch with "
            "torchrun --nproc-per-node N -m brainsurgeon ..."
        )
    if timeout_s is None:
        timeout_s = float(os.environ.get("BRAINSURGEON_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    use_nccl = str(device).startswith("cuda") and torch.cuda.is_available()
    if use_nccl:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        "nccl" if use_nccl else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
    )
    barrier("start-up")
    return True


def rank_device(device: torch.device) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU a rank)."""
    if device.type == "cuda" and device.index is None and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def _guard(what: str) -> Iterator[None]:
    """Turn a backend failure (dead peer, timeout) into a :class:`DistributedError`."""
    try:
        yield
    except BrainsurgeonError:
        raise
    except (RuntimeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(
            f"rank {rank()} of {world_size()}: {what} failed ({first[:200]}); another "
            "process probably failed or timed out: see its error above"
        ) from None


def _comm_device(t: Tensor) -> Tensor:
    """gloo collectives run on CPU tensors; nccl on CUDA ones."""
    return t.cpu() if backend() == "gloo" else t


def barrier(what: str = "barrier") -> None:
    """Wait for every rank (bounded by the group's timeout)."""
    if not active():
        return
    with _guard(what):
        if backend() == "gloo":
            dist.monitored_barrier(wait_all_ranks=True)
        else:
            dist.barrier()


def sum_(t: Tensor, what: str = "sum", dst: int | None = None) -> Tensor:
    """``sum over ranks of t``, identical on every rank (``dst``: only that rank's is right).

    Reduced to one rank in a fixed order, then broadcast (skipped when ``dst`` is given).
    """
    if not active():
        return t
    buf = _comm_device(t.detach()).clone().contiguous()
    with _guard(what):
        dist.reduce(buf, dst=0 if dst is None else dst, op=dist.ReduceOp.SUM)
        if dst is None:
            dist.broadcast(buf, src=0)
    return buf.to(t.device)


def broadcast_(t: Tensor, src: int, what: str = "broadcast") -> Tensor:
    """``t`` as held by rank ``src``, on every rank (copied into ``t`` in place)."""
    if not active():
        return t
    buf = _comm_device(t.detach()).clone().contiguous()
    with _guard(what):
        dist.broadcast(buf, src=src)
    with torch.no_grad():
        t.copy_(buf.to(t.device))
    return t


def gather_varlen(t: Tensor, dim: int = 0, what: str = "gather") -> list[Tensor]:
    """Every rank's ``t`` (same shape except along ``dim``), in rank order, on every rank."""
    if not active():
        return [t]
    n = world_size()
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(n)]
    moved = _comm_device(t.detach()).movedim(dim, 0).contiguous()
    with _guard(what):
        dist.all_gather(sizes, torch.tensor([moved.shape[0]]))
        top = max(int(s) for s in sizes)
        pad = moved.new_zeros((top, *moved.shape[1:]))
        pad[: moved.shape[0]] = moved
        out = [torch.empty_like(pad) for _ in range(n)]
        dist.all_gather(out, pad)
    return [o[: int(s)].movedim(0, dim).to(t.device) for o, s in zip(out, sizes, strict=True)]


def check_same(what: str, *values: int | str) -> None:
    """Refuse to go on unless every rank passes the same ``values`` (lengths, names).

    A rank holding other data or other layers would otherwise wait forever in a collective
    the others never enter (llm-compressor #2734); this costs one small all-gather.
    """
    if not active():
        return
    codes = [v if isinstance(v, int) else zlib.crc32(str(v).encode()) for v in values]
    mine = torch.tensor(codes, dtype=torch.long)
    with _guard(f"checking {what}"):
        every = [torch.empty_like(mine) for _ in range(world_size())]
        dist.all_gather(every, mine)
    if any(not torch.equal(e, every[0]) for e in every):
        raise DistributedError(
            f"the ranks disagree about {what} (rank {rank()} has {list(values)}); every rank "
            "must load the same model, data and options (same --seed, same files)"
        )
