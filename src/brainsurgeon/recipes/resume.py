"""Step checkpoints of a recipe run: ``OUT/steps/``, so ``--resume`` keeps finished steps.

While a recipe runs, ``OUT`` holds only ``steps/`` (the final folder replaces it atomically)::

    OUT/steps/recipe.yaml     the recipe being run (a resume must run the same one)
    OUT/steps/start/          the start run (the model before the steps, its metrics)
    OUT/steps/NN/run/         the model after step NN (a run directory, masks and codebooks)
    OUT/steps/NN/step.json    its record, history entry, compression record, RNG states
    OUT/steps/NN.epochs/      epoch checkpoints of the step in progress (training steps)

Every folder is written atomically. On resume the finished steps are loaded instead of run
and the RNG states restored, so the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from .. import runs
from .._io import atomic_dir, write_json
from ..errors import RunDirError
from ..training.checkpoint import rng_state, set_rng_state

STEPS_DIR = "steps"


class StepStore:
    """The step checkpoints under ``out/steps``; see the module docstring."""

    def __init__(self, out: Path, recipe: dict[str, Any]) -> None:
        self.root = Path(out) / STEPS_DIR
        self.recipe = json.loads(json.dumps(recipe, default=str))
        self.opened = False

    def open(self, *, resume: bool) -> None:
        """Start fresh (clearing old checkpoints) or check a resumed run: everything but the
        steps must be the same (a step's options may change: that step and the ones after it
        run again)."""
        saved = self.root / "recipe.json"
        self.opened = True
        if resume and saved.exists():
            old = json.loads(saved.read_text())
            diff = sorted(
                k for k in set(old) | set(self.recipe)
                if k != "steps" and old.get(k) != self.recipe.get(k)
            )  # fmt: skip
            if diff:
                raise RunDirError(
                    f"{self.root.parent} holds an unfinished run of another recipe (fields "
                    f"differ: {diff}); resume with the same recipe, or pass --force"
                )
            write_json(saved, self.recipe)
            return
        if self.root.exists():
            shutil.rmtree(self.root)
        write_json(saved, self.recipe)

    def discard_if_empty(self) -> None:
        """After a failure before any step finished: remove what :meth:`open` wrote."""
        if not self.opened or not self.root.is_dir():
            return
        if any(p.is_dir() and p.name.isdigit() for p in self.root.iterdir()):
            return
        shutil.rmtree(self.root, ignore_errors=True)
        out = self.root.parent
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()

    def epochs(self, index: int, options) -> tuple[Path, tuple[Path, dict[str, Any]]]:
        """``(folder, meta)`` for the epoch checkpoints of step ``index``; checkpoints left
        by the step with other options are removed (a changed learning rate is kept: the
        fix after a NaN)."""
        root = self.root / f"{index:02d}.epochs"
        record = {"options": json.loads(json.dumps(options, default=str))}
        meta = root / "step.json"
        if meta.exists() and _without_lr(json.loads(meta.read_text())) != _without_lr(record):
            shutil.rmtree(root)
        return root, (meta, record)

    def save_start(self, tmp_start: Path) -> None:
        """Keep a copy of the start run (and the RNG states after measuring it)."""
        tensors, info = rng_state()
        with atomic_dir(self.root / "start", force=True) as tmp:
            shutil.copytree(tmp_start, tmp / "run")
            save_file(tensors, str(tmp / "rng.safetensors"))
            write_json(tmp / "rng.json", info)

    def load_start(self, tmp_start: Path) -> dict[str, Any] | None:
        """Copy the saved start run to ``tmp_start`` and restore the RNGs; its metrics
        (None: not saved yet)."""
        saved = self.root / "start"
        if not (saved / "rng.json").exists():
            return None
        shutil.copytree(saved / "run", tmp_start)
        info = json.loads((saved / "rng.json").read_text())
        set_rng_state(load_file(str(saved / "rng.safetensors")), info)
        return json.loads((saved / "run" / runs.METRICS_FILE).read_text())

    def save(self, index: int, model, record: dict, entry: dict, compression: dict) -> None:
        tensors, info = rng_state()
        with atomic_dir(self.root / f"{index:02d}", force=True) as tmp:
            runs.save(model, tmp / "run")
            save_file(tensors, str(tmp / "rng.safetensors"))
            state = {"record": record, "history": entry, "compression": compression, "rng": info}
            write_json(tmp / "step.json", state)
        shutil.rmtree(self.root / f"{index:02d}.epochs", ignore_errors=True)

    def load(self, index: int, device, options) -> tuple[Any, dict[str, Any]] | None:
        """``(model, state)`` of finished step ``index`` with the RNGs restored, or None
        (not finished, or finished with other options)."""
        path = self.root / f"{index:02d}"
        if not (path / "step.json").exists():
            return None
        state = json.loads((path / "step.json").read_text())
        if state["record"].get("options") != json.loads(json.dumps(options, default=str)):
            return None
        model = runs.load_run(path / "run", device=device).model
        set_rng_state(load_file(str(path / "rng.safetensors")), state["rng"])
        return model, state


def _without_lr(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_lr(v) for k, v in value.items() if "lr" not in k}
    return value
