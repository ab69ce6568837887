"""Small shared helpers: device choice, seeding, environment facts for result files."""

from __future__ import annotations

import os
import platform
import random
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is a clear error."""
    if isinstance(device, torch.device):
        return device
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device} asked for, but this torch build sees no CUDA GPU; "
                "use --device cpu (or auto), or install a CUDA build of torch"
            )
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def environment() -> dict[str, Any]:
    """Facts every result file carries: versions, machine, threads."""
    from . import __version__

    return {
        "brainsurgeon": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


class preserved_modes:
    """Context manager: every submodule's own train/eval flag restored on exit.

    ``model.train(was)`` is recursive and would turn a pretrained model's dropout back on
    inside a wrapper that is in train mode; this restores each module's flag as it was.
    ``mode``: set ``"eval"`` or ``"train"`` on entry (None: leave as is)::

        with preserved_modes(model, "eval"):
            ...  # statistics in eval mode
    """

    def __init__(self, model: torch.nn.Module, mode: str | None = None) -> None:
        if mode not in (None, "eval", "train"):
            raise ValueError(f"mode must be None, 'eval' or 'train', got {mode!r}")
        self.model, self.mode = model, mode
        self.flags: list[tuple[torch.nn.Module, bool]] = []

    def __enter__(self) -> torch.nn.Module:
        self.flags = [(m, m.training) for m in self.model.modules()]
        if self.mode is not None:
            self.model.train(self.mode == "train")
        return self.model

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


def require_finite(name: str, tensor: torch.Tensor, action: str) -> None:
    """A :class:`NumericalError` naming ``name`` when ``tensor`` holds NaN or inf values."""
    from .errors import NumericalError

    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NumericalError(
            f"{name} holds {bad} NaN or infinite weight(s); {action} would write a broken "
            "model. The run is damaged or diverged: retrain it (lower the learning rate) or "
            "start from an earlier run"
        )


class numerical_step:
    """Context manager: a :class:`NumericalError` raised inside names ``what`` (the layer and
    the step, e.g. ``"the SparseGPT solve of fc1"``) and says ``fix``::

        with numerical_step("the GPTQ solve of fc1", "raise --damp (e.g. 0.1)"):
            ...
    """

    def __init__(self, what: str, fix: str = "") -> None:
        self.what, self.fix = what, fix

    def __enter__(self) -> numerical_step:
        return self

    def __exit__(self, kind, err, tb) -> bool:
        from .errors import NumericalError

        if kind is not None and issubclass(kind, NumericalError) and self.what not in str(err):
            hint = f"; {self.fix}" if self.fix and self.fix not in str(err) else ""
            raise NumericalError(f"{self.what}: {err}{hint}") from None
        return False


def check_finite(name: str, tensor: torch.Tensor, step: str, fix: str) -> None:
    """A :class:`NumericalError` when ``step`` gave ``name`` NaN or infinite values."""
    from .errors import NumericalError

    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NumericalError(
            f"{step} gave {name} {bad} NaN or infinite value(s); {fix}. Nothing was changed"
        )


NONDETERMINISTIC_CUDA = (
    "CUDA kernels that add with atomics (index_add_ in k-means' Lloyd step, the backward of "
    "scatter / index / embedding ops, cuDNN convolution backward) sum floats in a varying "
    "order, so two runs with one seed can differ in the last bits; for bit-identical GPU runs "
    "call torch.use_deterministic_algorithms(True) and set CUBLAS_WORKSPACE_CONFIG=:4096:8"
)


def determinism(device: str | torch.device | None) -> dict[str, Any]:
    """``{}`` on CPU (runs are bit-identical for a seed); on CUDA ``{"determinism":
    {"deterministic": bool, "reason": ...}}`` for a run's ``config.json``."""
    if resolve_device(device or "auto").type != "cuda":
        return {}
    if torch.are_deterministic_algorithms_enabled():
        return {"determinism": {"deterministic": True, "reason": "deterministic algorithms on"}}
    return {"determinism": {"deterministic": False, "reason": NONDETERMINISTIC_CUDA}}
