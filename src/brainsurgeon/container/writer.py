"""Write a model with its compression (masks, codebooks, codes, factors) into one ``.bsc`` file.

The file holds the model *as it computes*: every parametrization is baked in first, then each
weight is written by the smallest exact encoding (:mod:`.tensors`), so what loads is a plain
model whose outputs equal the in-memory compressed model's. The header keeps the model spec,
the architecture edits (factorization, hashing) and the run's data and normalisation.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import state
from .._io import write_bytes
from ..errors import ConfigError, RunDirError
from ..models.adapters import compressible_layers, layer_kind, layouts
from ..utils import environment
from .format import pack, unpack
from .table import ByteTable, byte_table
from .tensors import AUTO_WIDTHS, encode_raw, encode_weight

FORMAT = "brainsurgeon-compressed"
_NOT_RUN = (
    "parametrizations", "format", "format_version", "model", "edits", "versions", "baked",
    "weights_sha256",
)  # fmt: skip


ExportResult = ByteTable  # what export returns: the written file's byte table


def check_index_bits(index_bits: int | str | None) -> int | str | None:
    """``None`` (Han's 5 for fc, 8 for conv), ``"auto"`` or a width in 2..16."""
    if index_bits is None or index_bits == "auto":
        return index_bits
    try:
        width = int(index_bits)
    except (TypeError, ValueError):
        width = 0
    if not 1 <= width <= 16:
        raise ConfigError(
            f"index bits must be 1..16 or 'auto' (tries {AUTO_WIDTHS.start}.."
            f"{AUTO_WIDTHS.stop - 1}), got {index_bits!r}; Deep Compression uses 5 for fc "
            "and 8 for conv layers"
        )
    return width


def export(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    index_bits: int | str | None = None,
    codecs: tuple[str, ...] | None = None,
) -> ByteTable:
    """Write ``model`` to ``path`` atomically; returns the byte table.

    ``config``: the run's fields to keep (data, normalization, history, ...); ``index_bits``:
    CSR gap width (None = 5 for fc and 8 for conv, ``"auto"`` = the smallest of 2..10);
    ``codecs``: allowed stream codecs (default all: raw, Huffman, the entropy coder).
    ``model`` may be a run directory: its config and metrics are kept in the file.
    A ``path`` ending in ``.onnx`` writes an ONNX graph instead and returns
    :class:`brainsurgeon.deploy.OnnxExport` (:func:`brainsurgeon.deploy.export_onnx`); one
    ending in ``.c`` writes C99 source (:func:`brainsurgeon.deploy.export_c`).
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".onnx", ".c"):
        if config or metrics or index_bits is not None or codecs is not None:
            raise ConfigError(
                f"config, metrics, index_bits and codecs apply to .bsc files; a {suffix} path "
                "takes none (use brainsurgeon.deploy.export_onnx / export_c for its options)"
            )
        from ..deploy import export_c, export_onnx

        write = export_onnx if suffix == ".onnx" else export_c
        return write(model, path)  # type: ignore[return-value]
    data, table = encode(
        model, config=config, metrics=metrics, index_bits=index_bits, codecs=codecs
    )
    write_bytes(path, data)
    return dataclasses.replace(table, path=Path(path))


def encode(
    model: nn.Module | str | os.PathLike,
    *,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    index_bits: int | str | None = None,
    codecs: tuple[str, ...] | None = None,
) -> tuple[bytes, ByteTable]:
    """The file's bytes and byte table, without writing (options as :func:`export`)."""
    if not isinstance(model, nn.Module):
        from ..runs import load_run

        run = load_run(model)
        model = run.model
        config = {**run.config, **(config or {})}
        metrics = {**run.metrics, **(metrics or {})}
    spec = state.spec_of(model)
    if spec is None:
        raise RunDirError(
            "this model carries no spec; build it with brainsurgeon.build_model(...) or attach "
            "one with brainsurgeon.state.set_spec(model, spec) before exporting"
        )
    index_bits = check_index_bits(index_bits)
    hints, kinds, weights = _inventory(model)
    baked = state.make_permanent(copy.deepcopy(model)).cpu()
    encoded = [
        encode_weight(
            k, v.float(), kind=kinds[k], hint=hints.get(k), index_bits=index_bits, codecs=codecs
        )
        if k in weights and v.dtype == torch.float32
        else encode_raw(k, v)
        for k, v in baked.state_dict().items()
    ]
    for e in encoded:
        e.record["kind"] = kinds.get(e.record["name"], "other")
    header = _header(spec, model, config, metrics, [e.record for e in encoded])
    header["parameters"] = sum(p.numel() for p in baked.parameters())
    sections = {name: data for e in encoded for name, data in e.sections.items()}
    data = pack(header, sections)
    return data, byte_table(unpack(data), len(data))


def _inventory(model: nn.Module) -> tuple[dict[str, dict], dict[str, str], set[str]]:
    """Per state-dict key of the baked model: quantizer hints, layer kinds, which are weights."""
    hints, kinds, weights = {}, {}, set()
    for layer, module in compressible_layers(model):
        for t in layouts(module):
            key = f"{layer}.{t.tensor}" if layer else t.tensor
            kinds[key] = layer_kind(module)
            chain = state.parametrizations_of(module, t.tensor)
            if not t.bias or chain:
                weights.add(key)
            for p in chain:
                hints[key] = {**hints.get(key, {}), **quantizer_hint(p)}
    return hints, kinds, weights


def quantizer_hint(p: nn.Module) -> dict[str, Any]:
    """What a value model needs from the quantizer ``p``: the scale, zero point and code
    range of a uniform (or GPTQ) grid, or a vector quantizer's codebooks and indices."""
    kind = getattr(p, "kind", "")
    if kind in ("product", "residual"):
        vector = {"kind": kind, "config": p.config()}
        vector["codebooks"] = p.codebooks.detach().cpu().numpy()
        vector["indices"] = p.indices.detach().cpu().numpy()
        return {"vector": vector}
    if kind != "uniform":
        return {}
    from ..quantization.methods.uniform import code_range

    qmin, _ = code_range(p.bits, p.symmetric)
    return {
        "scale": p.scale.detach().cpu().numpy(),
        "zero_point": p.zero_point.detach().cpu().numpy(),
        "group_size": getattr(p, "group_size", 0),
        "bits": p.bits,
        "qmin": qmin,
    }


def _header(spec, model, config, metrics, records) -> dict[str, Any]:
    run = {k: v for k, v in (config or {}).items() if k not in _NOT_RUN}
    return {
        "format": FORMAT,
        "model": spec,
        "edits": state.edits_of(model),
        "run": run,
        "metrics": metrics or {},
        "versions": environment(),
        "tensors": records,
    }
