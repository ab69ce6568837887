"""Round checkpoints of a long run: ``OUT/rounds/NN/``, written atomically, resumable.

Each finished round is written to ``OUT/rounds/NN/`` (``model.safetensors`` with the masks,
``config.json``, ``metrics.json``; a loadable run directory when the model has a spec). A run
killed at any moment leaves only complete rounds behind, and ``resume`` restarts after the
last one. The algorithm seeds every random choice of round ``r`` from ``seed + r``, so a
resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import distributed as parallel
from .. import runs, state
from .._io import atomic_dir, check_replaceable, recover, refuse_file_out, write_json
from ..config import Config
from ..errors import RunDirError
from ..pruning.masks import find_mask, set_mask

ROUNDS_DIR = "rounds"


def check_out_dir(path: str | Path, *, resume: bool, force: bool) -> None:
    """Refuse an existing output directory unless resuming (a pruning run) or forcing."""
    path = Path(path)
    if path.parent.is_dir():
        recover(path)  # a run killed while writing its final folder
    refuse_file_out(path)
    if not path.exists() or force and not resume:
        return
    finished, partial = (path / runs.CONFIG_FILE).exists(), (path / ROUNDS_DIR).is_dir()
    if not (finished or partial):
        raise RunDirError(
            f"{path} already exists and holds no pruning run; choose another "
            "--out, or pass --force to replace it"
        )
    if not resume:
        held = "a finished run" if finished else "an unfinished pruning run"
        raise RunDirError(
            f"{path} already holds {held}; pass --resume to continue it or "
            "--force to start over, or choose another --out"
        )


class RoundStore:
    """Checkpoints under ``OUT/rounds/NN/``; knows which rounds are complete."""

    def __init__(
        self, out_dir: str | Path, config: Config, base_config: dict[str, Any] | None = None
    ) -> None:
        self.root = Path(out_dir)
        self.config = config
        self.base_config = dict(base_config or {})

    def path(self, index: int) -> Path:
        return self.root / ROUNDS_DIR / f"{index:02d}"

    def completed(self) -> list[int]:
        folder = self.root / ROUNDS_DIR
        if not folder.is_dir():
            return []
        done = {
            int(p.name)
            for p in folder.iterdir()
            if p.name.isdigit() and (p / runs.CONFIG_FILE).exists()
        }
        count = 0
        while count + 1 in done:  # rounds are written in order; keep the complete prefix
            count += 1
        return list(range(1, count + 1))

    def save(self, model: nn.Module, index: int, record: dict[str, Any]) -> None:
        cfg = {"pruning_round": index, "pruning_config": self.config.to_dict()}
        if state.spec_of(model) is not None:
            cfg = {**self.base_config, **cfg}
            runs.save(model, self.path(index), config=cfg, metrics=record, force=True)
            return
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        with atomic_dir(self.path(index), force=True) as tmp:
            save_file(tensors, str(tmp / runs.MODEL_FILE))
            write_json(tmp / runs.CONFIG_FILE, {**cfg, "parametrizations": state.describe(model)})
            write_json(tmp / runs.METRICS_FILE, record)

    def load(self, model: nn.Module, index: int) -> dict[str, Any]:
        """Restore round ``index`` into ``model`` (masks first, then tensors); its record."""
        path = self.path(index)
        cfg = json.loads((path / runs.CONFIG_FILE).read_text())
        self.check_config(cfg)
        for rec in cfg.get("parametrizations", []):
            module = model.get_submodule(rec["module"])
            if (
                any(item["kind"] == "mask" for item in rec["chain"])
                and find_mask(module, rec["tensor"]) is None
            ):
                set_mask(module, rec["tensor"], torch.ones_like(getattr(module, rec["tensor"])))
        tensors = load_file(str(path / runs.MODEL_FILE))
        device = next(iter(model.state_dict().values())).device
        model.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=True)
        return json.loads((path / runs.METRICS_FILE).read_text())

    def check_config(self, cfg: dict[str, Any]) -> None:
        saved = cfg.get("pruning_config", {})
        ours = self.config.to_dict()
        diff = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
        if diff:
            raise RunDirError(
                f"{self.root} holds rounds of a different pruning run (fields differ: {diff}); "
                "use the same options to --resume, or --force to start over"
            )

    def records(self) -> list[dict[str, Any]]:
        return [
            json.loads((self.path(i) / runs.METRICS_FILE).read_text()) for i in self.completed()
        ]

    def clear(self) -> None:
        """Delete the run directory (rank 0 only under ``torch.distributed``)."""
        if self.root.exists() and parallel.is_main():
            check_replaceable(self.root)
            shutil.rmtree(self.root)
