"""Epoch checkpoints of :func:`brainsurgeon.training.fit`: resume a training run bit-identically.

After every epoch ``fit`` writes ``DIR/epoch-NN/`` atomically (:func:`brainsurgeon._io.atomic_dir`)
and then removes the previous epoch's folder::

    model.safetensors   the model's state_dict (masks, codebooks, float weights)
    state.safetensors   optimizer tensors (``opt.<i>.<key>``), RNG states (torch, the batch
                        generator, CUDA), the early-stopping weights (``best.<name>``)
    state.json          epoch, history, optimizer param groups and scalars, numpy / python
                        RNG states, early-stopping score, the fit's fingerprint

Nothing is pickled. A resumed ``fit`` loads the newest complete epoch and continues with the
next one; since every random choice of an epoch comes from the restored generator states, it
ends exactly (bit for bit, on CPU) where an uninterrupted run ends.

Commands open a session with :func:`epoch_checkpoints`; every ``fit`` inside it (distillation
has two: the FitNets hint stage and the distillation) gets its own ``fit-NN`` folder, numbered
in call order (the control flow of a seeded run is the same on resume).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._io import atomic_dir, write_json
from ..errors import RunDirError

MODEL_FILE, STATE_TENSORS, STATE_FILE = "model.safetensors", "state.safetensors", "state.json"


@dataclass
class Restored:
    """What a checkpoint gives back to ``fit``: the epochs done, their records, whether
    early stopping had fired, and the early-stopping state."""

    epoch: int
    history: list[dict[str, Any]]
    stopped: bool
    best: dict[str, Any]


class EpochCheckpoint:
    """``root/epoch-NN/`` folders of one ``fit`` call; see the module docstring."""

    def __init__(self, root: str | Path, meta: tuple[Path, dict[str, Any]] | None = None) -> None:
        self.root = Path(root)
        self.meta = meta  # (file, record) written before the first epoch of the session

    def completed(self) -> list[int]:
        """Epoch numbers with a complete folder (hidden temp folders are ignored)."""
        if not self.root.is_dir():
            return []
        return sorted(
            int(p.name.split("-", 1)[1])
            for p in self.root.iterdir()
            if p.name.startswith("epoch-") and (p / STATE_FILE).exists()
        )

    def path(self, epoch: int) -> Path:
        return self.root / f"epoch-{epoch:03d}"

    def save(self, epoch: int, model: nn.Module, opt, gen, best, history, stopped, key) -> None:
        """Write epoch ``epoch`` (1-based) atomically, then drop the older folders."""
        tensors, info = _optimizer_flat(opt)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.batches"] = gen.get_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        if best.state is not None:
            tensors.update({f"best.{k}": v for k, v in best.state.items()})
        state = {
            "epoch": epoch,
            "key": key,
            "history": history,
            "stopped": stopped,
            "optimizer": info,
            "best": {"score": _num(best.score), "stale": best.stale},
            "rng": {"numpy": _np_state(), "python": _py_state()},
        }
        if self.meta is not None and not self.meta[0].exists():
            write_json(*self.meta)
        with atomic_dir(self.path(epoch), force=True) as tmp:
            save_file(_plain(model.state_dict()), str(tmp / MODEL_FILE))
            save_file(_plain(tensors), str(tmp / STATE_TENSORS))
            write_json(tmp / STATE_FILE, state)
        for old in self.completed():
            if old < epoch:
                shutil.rmtree(self.path(old), ignore_errors=True)

    def restore(self, model: nn.Module, opt, gen, key: dict[str, Any]) -> Restored | None:
        """Load the newest complete epoch into ``model``/``opt``/``gen`` and the RNGs."""
        done = self.completed()
        if not done:
            return None
        path = self.path(done[-1])
        state = json.loads((path / STATE_FILE).read_text())
        if state.get("key") != key:
            raise RunDirError(
                f"{path} is a checkpoint of a different training run (other options or "
                "model); resume with the same options, or pass --force to start over"
            )
        device = next(iter(model.state_dict().values())).device
        weights = load_file(str(path / MODEL_FILE))
        model.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=True)
        tensors = load_file(str(path / STATE_TENSORS))
        opt.load_state_dict(_optimizer_unflat(tensors, state["optimizer"]))
        torch.set_rng_state(tensors["rng.torch"])
        gen.set_state(tensors["rng.batches"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(_np_unstate(state["rng"]["numpy"]))
        random.setstate(_py_unstate(state["rng"]["python"]))
        best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
        best = {**state["best"], "state": best_state or None}
        return Restored(state["epoch"], state["history"], state["stopped"], best)


def fit_key(model: nn.Module, config, desc: str) -> dict[str, Any]:
    """What identifies a ``fit`` call: its config, description and the model's tensors.

    The learning rate is left out: a run that diverged may be resumed with a smaller one.
    """
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    options = {k: v for k, v in config.to_dict().items() if k != "lr"}
    return {"config": options, "desc": desc, "shapes": shapes}


_SESSION: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "brainsurgeon_epoch_checkpoints", default=None
)


@contextlib.contextmanager
def epoch_checkpoints(
    root: str | Path | None, meta: tuple[Path, dict[str, Any]] | None = None
) -> Iterator[None]:
    """Every :func:`fit` in the block checkpoints its epochs under ``root/fit-NN/`` (and
    resumes from them); ``root=None`` turns checkpoints off. ``meta = (file, record)``: a
    JSON record (the command's options) written before the first checkpoint."""
    token = _SESSION.set(None if root is None else [Path(root), 0, meta])
    try:
        yield
    finally:
        _SESSION.reset(token)


def next_checkpoint() -> EpochCheckpoint | None:
    """The checkpoint folder of the next ``fit`` call in the active session, or None."""
    session = _SESSION.get()
    if session is None:
        return None
    session[1] += 1
    return EpochCheckpoint(session[0] / f"fit-{session[1]:02d}", session[2])


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _num(x: float) -> float | str:
    return x if np.isfinite(x) else str(x)


def _optimizer_flat(opt) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state_dict as safetensors-able tensors plus JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_unflat(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            idx, name = key[4:].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for key, value in info["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": info["param_groups"]}


def _np_state() -> list[Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _np_unstate(s: list[Any]) -> tuple[Any, ...]:
    return (s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4])


def _py_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _py_unstate(s: list[Any]) -> tuple[Any, ...]:
    return (s[0], tuple(s[1]), s[2])


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The global RNG states (torch, CUDA, numpy, python) as tensors + JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors, {"numpy": _np_state(), "python": _py_state()}


def set_rng_state(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(_np_unstate(info["numpy"]))
    random.setstate(_py_unstate(info["python"]))
