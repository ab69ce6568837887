"""Run directories: ``model.safetensors`` + ``config.json`` + ``metrics.json``. No pickle.

``config.json`` holds everything needed to rebuild the model and its data::

    {"format": "brainsurgeon-run", "format_version": 1,
     "model": {"name", "input_shape", "num_classes", "kwargs"},
     "data": {"name", ...}, "normalization": {"mean", "std"},
     "training": {...}, "seed": 0, "versions": {...},
     "edits": [...],             # architecture edits replayed before loading (factorize, ...)
     "parametrizations": [...],  # masks / quantizers re-created before loading
     "compression": {...},       # what each technique records about itself
     "history": [...],           # the steps that made this run, in order
     "weights_sha256": "..."}    # of model.safetensors; a mismatch is refused on load

``load`` rebuilds the model from the spec, replays edits, re-creates parametrizations and
loads the tensors with ``safetensors``; every failure is a :class:`RunDirError` naming the fix.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import state
from ._io import atomic_dir, write_json
from .errors import BrainsurgeonError, RunDirError, first_line
from .utils import environment

FORMAT = "brainsurgeon-run"
FORMAT_VERSION = 1
MODEL_FILE, CONFIG_FILE, METRICS_FILE = "model.safetensors", "config.json", "metrics.json"
#: The type of each structural field of ``config.json`` (checked on read).
FIELD_TYPES = {
    "model": dict,
    "data": dict,
    "training": dict,
    "history": list,
    "edits": list,
    "parametrizations": list,
    "compression": dict,
    "weights_sha256": str,
}


@dataclass
class Run:
    """A loaded run directory: the model, its config and metrics."""

    path: Path
    model: nn.Module
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    def data(self, **overrides: Any):
        """Load the data this run was trained on, normalised with the recorded statistics."""
        from .data import load_data

        spec = {**_recorded_data(self), **overrides}
        if not spec.get("name"):
            raise RunDirError(
                f"{self.path} records no data set; pass one (e.g. --data digits, an .npz file or "
                "an MNIST IDX folder), or export with config={'data': data.spec, "
                "'normalization': data.normalization}"
            )
        name = spec.pop("name")
        norm = _recorded_normalization(self)
        bundle = load_data(name, normalization=norm, **spec)
        _check_fits(self, bundle, name)
        return bundle

    def child_config(self, step: dict[str, Any]) -> dict[str, Any]:
        """A copy of this run's config with ``step`` appended to the history (for derived runs)."""
        cfg = copy.deepcopy(self.config)
        cfg.setdefault("history", []).append({**step, "parent": str(self.path)})
        return cfg


#: the extra fields of ``text:FILE`` data (:func:`brainsurgeon.data.embeddings.load_text_data`)
TEXT_DATA_FIELDS = {
    "teacher": str, "max_length": int, "calib": int, "val": int, "eval": int, "column": str,
    "tokenizer": str,
}  # fmt: skip


def _recorded_data(run: Run) -> dict[str, Any]:
    """The run's ``data`` record (``{"name", "seed", "val_size"}``), checked field by field."""
    spec = run.config.get("data", {})
    types = {"name": str, "seed": int, "val_size": int, "progress": bool}
    if isinstance(spec, dict) and str(spec.get("name", "")).startswith("text:"):
        types = {**types, **TEXT_DATA_FIELDS}
    bad = not isinstance(spec, dict) or any(
        k not in types or (v is not None and type(v) is not types[k]) for k, v in spec.items()
    )
    if bad or (isinstance(spec.get("seed"), int) and not 0 <= spec["seed"] < 2**32):
        raise RunDirError(
            f"{run.path}: the recorded data {spec!r} is not {{'name': str, 'seed': int, "
            "'val_size': int}}; the run is corrupt (or pass --data where the command has it)"
        )
    return spec


def _recorded_normalization(run: Run) -> dict[str, float] | None:
    """``{"mean", "std"}`` recorded at training (finite numbers, std > 0), or None."""
    import math

    norm = run.config.get("normalization")
    if norm is None:
        return None
    ok = isinstance(norm, dict) and all(
        isinstance(norm.get(k), int | float) and not isinstance(norm.get(k), bool)
        and math.isfinite(norm[k]) for k in ("mean", "std")
    )  # fmt: skip
    if not ok or norm["std"] <= 0:
        raise RunDirError(
            f"{run.path}: the recorded normalization {norm!r} is not {{'mean': number, "
            "'std': number > 0}}; the run is corrupt, re-create it"
        )
    return norm


def _check_fits(run: Run, bundle, name: str) -> None:
    """Refuse data whose samples or labels the run's model cannot take (one line)."""
    from .errors import DataError

    model = run.config.get("model") if isinstance(run.config.get("model"), dict) else {}
    want = model.get("input_shape")
    if want is not None and tuple(want) != tuple(bundle.input_shape):
        raise DataError(
            f"data {name!r} has samples of shape {tuple(bundle.input_shape)} but the model of "
            f"{run.path} takes {tuple(want)}; pass data of the shape it was trained on"
        )
    classes = model.get("num_classes")
    if isinstance(classes, int) and bundle.num_classes > max(classes, 2):
        raise DataError(
            f"data {name!r} has {bundle.num_classes} classes but the model of {run.path} "
            f"predicts {classes}; pass data with labels 0..{classes - 1}"
        )


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    files: dict[str, str | bytes] | None = None,
    force: bool = False,
) -> Path:
    """Write a run directory atomically (complete or not at all); returns its path.

    ``config``: run fields (data, normalization, training, history, compression, ...); the
    model spec, edits, parametrizations and versions are filled in here. ``files``: extra
    files (name -> text or bytes) written inside the directory.
    """
    spec = state.spec_of(model)
    if spec is None:
        raise RunDirError(
            "this model carries no spec; build it with brainsurgeon.build_model(...) or "
            "attach one with brainsurgeon.state.set_spec(model, spec) before saving"
        )
    cfg = dict(config or {})
    cfg.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        model=spec,
        edits=state.edits_of(model),
        parametrizations=state.describe(model),
        versions=environment(),
    )
    cfg.update(_placement(model))
    files = dict(files or {})
    if spec.get("name") == "hf":  # its transformers config and tokenizer files: RUN/hf/
        from .models.hf_layout import hf_layout_files

        files.update(hf_layout_files(model, cfg["edits"]))
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_dir(path, force=force) as tmp:
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
        cfg["weights_sha256"] = _sha256(tmp / MODEL_FILE)
        write_json(tmp / CONFIG_FILE, _ordered(cfg))
        write_json(tmp / METRICS_FILE, metrics or {})
        for name, content in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
    return path


def _placement(model: nn.Module) -> dict[str, Any]:
    """``world_size``, ``backend`` (None alone) and ``device`` of the process that saved."""
    from .distributed import describe

    first = next(iter(model.state_dict().values()), None)
    return describe(first.device if first is not None else None)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``config.json`` of a run directory."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(
            f"run directory {path} does not exist; train one with "
            "`brainsurgeon train --out DIR` or check the path"
        )
    if not path.is_dir():
        raise RunDirError(f"{path} is not a directory; pass a run directory made by brainsurgeon")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.exists():
        raise RunDirError(f"{path} has no {CONFIG_FILE}; it is not a brainsurgeon run directory")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(
            f"{cfg_path} is not valid JSON ({err}); the run is corrupt, re-create it"
        ) from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "model" not in cfg:
        raise RunDirError(f"{cfg_path} is not a brainsurgeon run config")
    for key, kind in FIELD_TYPES.items():
        if key in cfg and not isinstance(cfg[key], kind):
            raise RunDirError(
                f"{cfg_path}: field {key!r} holds {type(cfg[key]).__name__}, expected "
                f"{kind.__name__}; the run is corrupt or was edited by hand"
            )
    version = cfg.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise RunDirError(f"{cfg_path}: format_version is {version!r}, not an integer")
    if version > FORMAT_VERSION:
        raise RunDirError(
            f"{path} was written by a newer brainsurgeon (format "
            f"{cfg['format_version']}); upgrade brainsurgeon"
        )
    return cfg


def load_run(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    inference: bool = False,
    runtime: str | None = None,
) -> Run:
    """Load a run directory or a compressed ``.bsc`` file: model, config, metrics.

    A run directory's model keeps its masks and quantizers (ready to fine-tune further); with
    ``inference=True`` they are baked into plain tensors. A ``.bsc`` file always loads baked.
    ``runtime``: ``"dense"`` (plain layers) or ``"sparse"`` (sparse Linear kernels where they
    pay, :mod:`brainsurgeon.runtime`); implies ``inference``.
    """
    from .container import is_compressed_file

    path = Path(path)
    if is_compressed_file(path):
        run = _load_file(path)
    else:
        run = _load_dir(path)
    if inference or runtime is not None:
        from .runtime import to_inference

        run.model = to_inference(run.model, runtime or "dense", inplace=True)
    run.model.to(device).eval()
    return run


def _load_file(path: Path) -> Run:
    from .container import read

    loaded = read(path)
    header = loaded.header
    recorded = header.get("run", {})
    if not isinstance(recorded, dict) or not isinstance(header.get("metrics", {}), dict):
        raise RunDirError(f"{path}: the header's run or metrics record is not a mapping; re-export")
    cfg = {**recorded, "model": header["model"], "edits": header.get("edits", [])}
    cfg.update(format="brainsurgeon-compressed", baked=True, file_bytes=loaded.file_bytes)
    return Run(path=path, model=loaded.model, config=cfg, metrics=dict(header.get("metrics", {})))


def _load_dir(path: Path) -> Run:
    from .models import build_from_spec

    cfg = read_config(path)
    weights = path / MODEL_FILE
    if not weights.exists():
        raise RunDirError(f"{path} has no {MODEL_FILE}; the run is incomplete, re-create it")
    expected = cfg.get("weights_sha256")
    if expected is not None and _sha256(weights) != expected:
        raise RunDirError(
            f"{weights} does not match the checksum recorded in {CONFIG_FILE}: the weights were "
            "replaced or damaged (corrupt); restore the run's own model.safetensors or "
            "re-create the run"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunDirError(f"{weights} is corrupt ({err}); re-create the run") from None
    try:
        model = build_from_spec(cfg["model"])
        state.apply_edits(model, cfg.get("edits", []))
        state.restore(model, cfg.get("parametrizations", []))
    except BrainsurgeonError:
        raise
    except Exception as err:  # a spec that no longer builds: say so plainly
        raise RunDirError(f"cannot rebuild the model of {path}: {first_line(err)}") from None
    state.set_spec(model, cfg["model"])
    for rec in cfg.get("edits", []):
        model.__dict__.setdefault(state.EDITS_ATTR, []).append(rec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise RunDirError(
            f"{weights} does not match the model in {CONFIG_FILE} ({first}); "
            "the run is corrupt or was edited by hand"
        ) from None
    return Run(path=path, model=model, config=cfg, metrics=_read_metrics(path / METRICS_FILE))


def _read_metrics(path: Path) -> dict[str, Any]:
    """``metrics.json`` (absent: no metrics); a file that is not a JSON object is refused."""
    if not path.exists():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path} is not valid JSON ({err}); the run is corrupt") from None
    if not isinstance(metrics, dict):
        raise RunDirError(f"{path} holds {type(metrics).__name__}, not a JSON object of metrics")
    return metrics


def load(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    inference: bool = False,
    runtime: str | None = None,
) -> nn.Module:
    """Rebuild the model of a run directory (with its compression state) or of a ``.bsc``
    file (baked, ready for inference) on ``device``; see :func:`load_run`."""
    return load_run(path, device=device, inference=inference, runtime=runtime).model


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ordered(cfg: dict[str, Any]) -> dict[str, Any]:
    first = ["format", "format_version", "model", "data", "normalization", "seed", "training"]
    out = {k: cfg[k] for k in first if k in cfg}
    out.update({k: v for k, v in cfg.items() if k not in out})
    return out
