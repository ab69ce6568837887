"""The Hugging Face folder layout of a brainsurgeon HF model: what
``transformers.AutoModel.from_pretrained(folder)`` reads (config, weights, tokenizer files).

A run directory keeps ``hf/`` (config and tokenizer, no weights: the run's own
``model.safetensors`` holds them with the masks); ``export --format hf`` writes the whole
folder with masks and quantizers baked in (:func:`save_pretrained`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data.text import TOKENIZER_FILES
from ..errors import ConfigError
from .hf import HFEncoder


def hf_layout_files(
    model: HFEncoder, edits: list[dict[str, Any]], *, weights: bool = False, prefix: str = "hf/"
) -> dict[str, bytes | str]:
    """Files of the layout ``transformers.AutoModel.from_pretrained(folder)`` reads: the
    config and tokenizer files, and with ``weights`` a ``model.safetensors`` with masks and
    quantizers baked in. A run directory keeps ``hf/`` without weights (its own
    ``model.safetensors`` holds them, masks included); ``export --format hf`` writes all.
    Raises when an architecture edit (shrink, factorization) makes the layout impossible."""
    import copy

    from safetensors.torch import save

    from ..state import make_permanent

    if edits and weights:
        kinds = sorted({e.get("kind", "?") for e in edits})
        raise ConfigError(
            f"transformers cannot express this model's architecture edits ({', '.join(kinds)}: "
            "per-layer head counts or widths); export it as .bsc or ONNX, or load it with "
            "brainsurgeon.load"
        )
    from ..state import spec_of

    source = (spec_of(model) or {}).get("kwargs", {}).get("source")
    files: dict[str, bytes | str] = {f"{prefix}config.json": model.backbone.config.to_json_string()}
    if weights:
        baked = make_permanent(copy.deepcopy(model.backbone))
        tensors = {k: v.detach().cpu().contiguous() for k, v in baked.state_dict().items()}
        files[f"{prefix}model.safetensors"] = save(tensors, metadata={"format": "pt"})
    if source and Path(source).is_dir():
        for name in TOKENIZER_FILES:
            if name == "config.json":  # written from the model above
                continue
            f = Path(source) / name
            if f.exists():
                files[f"{prefix}{name}"] = f.read_bytes()
    return files


def save_pretrained(model: HFEncoder, folder: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``model`` (masks and quantizers baked in) as a folder that
    ``transformers.AutoModel.from_pretrained(folder)`` loads: config, weights, tokenizer files.
    Written atomically; refused when an architecture edit makes it impossible."""
    from .._io import atomic_dir
    from ..state import edits_of

    if not isinstance(model, HFEncoder):
        raise ConfigError(
            f"--format hf needs a Hugging Face model (brainsurgeon import), got "
            f"{type(model).__name__}; export it as .bsc or ONNX instead"
        )
    files = hf_layout_files(model, edits_of(model), weights=True, prefix="")
    path = Path(folder)
    with atomic_dir(path, force=force) as tmp:
        for name, content in files.items():
            target = tmp / name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
    return path
