"""Shared pieces of the experiments: opening the base run, the experiment folder with one
atomic JSON per finished cell (so an interrupted experiment resumes where it stopped),
fingerprints, mean and spread over seeds, and the environment stamp every result carries."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .._io import _default, check_replaceable, write_json
from ..errors import RunDirError
from ..runs import Run, load_run
from ..utils import environment

EXPERIMENT_FILE = "experiment.json"
CELLS_DIR = "cells"
Log = Callable[[str], None]


def open_base(run: str | os.PathLike | Run, device: str | torch.device = "cpu") -> Run:
    """Load the base run (a path or an already loaded :class:`Run`)."""
    from ..reports.html import load_techniques

    if isinstance(run, Run):
        return run
    load_techniques()
    return load_run(run, device=device)


QUALITY = ("accuracy", "cosine", "r2")  # higher is better, in this order of preference


def quality(ev: dict[str, Any]) -> tuple[str, float]:
    """``(name, value)`` of an :func:`~brainsurgeon.training.evaluate` result's quality
    metric: accuracy (classification), cosine (embedding models), r2 (regression)."""
    for name in QUALITY:
        if name in ev:
            return name, float(ev[name])
    raise RunDirError(
        f"this run's evaluation reports none of {', '.join(QUALITY)} (got: {', '.join(ev)}); "
        "experiments compare one of them"
    )


def fingerprint(obj: Any) -> str:
    """A short stable hash of JSON-able ``obj`` (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tensor_hash(*tensors: torch.Tensor) -> str:
    """sha256 prefix of the bytes of ``tensors`` (identifies a calibration set)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def stamp(payload: dict[str, Any], seed: int) -> dict[str, Any]:
    """Add the seed and the environment (versions, machine, threads) to a result."""
    return {**payload, "seed": seed, "environment": environment()}


class ExperimentDir:
    """``OUT/experiment.json`` (what is being run) + ``OUT/cells/KEY.json`` (finished cells).

    Opening a folder that holds the same experiment resumes it; a different one is refused
    unless ``force`` (which clears the old cells first). Checked before any work starts.
    """

    def __init__(
        self, root: str | os.PathLike, kind: str, config: dict[str, Any], *, force: bool = False
    ) -> None:
        self.root = Path(root)
        self.kind = kind
        self.config = config
        self.id = fingerprint({"kind": kind, **config})
        self._check(force)
        self._created = not self.root.exists()  # a refusal before any real work removes it
        self._computed = 0

    def _check(self, force: bool) -> None:
        meta_path = self.root / EXPERIMENT_FILE
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise RunDirError(f"--out {self.root} is a file; choose a directory")
        if not meta_path.exists():
            if any(self.root.iterdir()):
                raise RunDirError(
                    f"--out {self.root} exists and is not a {self.kind} directory; "
                    "choose another --out (nothing was written)"
                )
            return
        meta = _read_json(meta_path)
        if meta.get("id") == self.id:
            return
        if not force:
            old = meta.get("config", {})
            diff = sorted(
                k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k)
            )
            raise RunDirError(
                f"--out {self.root} holds a different {meta.get('kind', '?')} "
                f"(fields differ: {diff}); pass --force to start over or choose "
                "another --out"
            )
        check_replaceable(self.root)
        shutil.rmtree(self.root)

    def start(self, extra: dict[str, Any]) -> None:
        """Create the folder and record the experiment (idempotent)."""
        write_json(
            self.root / EXPERIMENT_FILE,
            {"kind": self.kind, "id": self.id, "config": self.config, **extra},
        )

    def cell_path(self, key: str) -> Path:
        return self.root / CELLS_DIR / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.cell_path(key)
        if not path.exists():
            return None
        cell = _read_json(path)
        return cell if cell.get("experiment") == self.id else None

    def put(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "key": key, "experiment": self.id}
        write_json(self.cell_path(key), record)
        return record

    def run_cells(
        self, keys: Iterable[str], compute: Callable[[str], dict[str, Any]], log: Log | None = None
    ) -> dict[str, dict[str, Any]]:
        """Each cell from disk if finished, else ``compute(key)`` then written atomically."""
        keys = list(keys)
        out = {}
        for i, key in enumerate(keys, 1):
            cell = self.get(key)
            if cell is None:
                cell = self.put(key, self._compute(key, compute))
                if log:
                    log(f"[{i}/{len(keys)}] {key}: {_brief(cell)}")
            elif log:
                log(f"[{i}/{len(keys)}] {key}: done earlier, kept")
            out[key] = cell
        return out

    def _compute(self, key: str, compute: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """``compute(key)``; a refusal (bad option or data) in the first cell after the cheap
        baseline of a folder this run created removes the folder: nothing half-written."""
        from ..errors import BrainsurgeonError

        try:
            record = compute(key)
        except BrainsurgeonError:
            if self._created and self._computed <= 1 and self.root.exists():
                shutil.rmtree(self.root)
            raise
        self._computed += 1
        return record


def _brief(cell: dict[str, Any]) -> str:
    acc = cell.get("accuracy")
    acc_text = f"accuracy {100 * acc:.2f}%" if isinstance(acc, float) else ""
    return f"{acc_text} ({cell.get('seconds', 0):.1f} s)"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path} is corrupt ({err}); delete it or pass --force") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} is not a JSON object; delete it or pass --force")
    return data


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min, max and count."""
    v = [float(x) for x in values]
    n = len(v)
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(v), "max": max(v), "n": n}


def size_metrics(model: torch.nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Nonzero weights and encoded size of ``model`` (the energy module's storage model)."""
    from ..metrics.energy import energy_report

    rep = energy_report(model, input_shape)
    weights = sum(r["weights"] for r in rep["layers"])
    nonzeros = sum(r["nonzeros"] for r in rep["layers"])
    return {
        "weights": weights,
        "nonzero_weights": nonzeros,
        "weight_sparsity": 1.0 - nonzeros / max(weights, 1),
        "encoded_bytes": rep["encoded_bytes"],
        "dense_bytes": rep["dense_fp32"]["stored_bytes"],
        "compression_ratio": rep["size_ratio"],
        "params_ratio": weights / max(nonzeros, 1),
        "energy_nj": rep["energy_nj"],
    }
