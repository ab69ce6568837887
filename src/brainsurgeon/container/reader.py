"""Read a ``.bsc`` file back into a runnable model (plain tensors, ready for inference)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .. import state
from ..errors import BrainsurgeonError, first_line
from .format import MAGIC, CompressedFileError, Container, is_container, section, unpack
from .table import ByteTable, byte_table
from .tensors import decode_tensor
from .writer import FORMAT


@dataclass(frozen=True)
class Loaded:
    """A read file: the ``model`` (eval mode), its ``header`` and the parsed ``container``."""

    model: nn.Module
    header: dict[str, Any]
    container: Container
    file_bytes: int
    path: Path | None = None

    def table(self) -> ByteTable:
        """The file's byte table (per tensor and stream)."""
        return byte_table(self.container, self.file_bytes, self.path)


def is_compressed_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file starting with the ``.bsc`` magic bytes."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return is_container(fh.read(len(MAGIC)))


def read(path: str | os.PathLike) -> Loaded:
    """Verify, decode and rebuild the model in ``path``; one-line errors naming the damage."""
    path = Path(path)
    if not path.is_file():
        raise CompressedFileError(f"{path} does not exist or is not a file")
    data = path.read_bytes()
    container = unpack(data, source=str(path))
    header = container.header
    if header.get("format") != FORMAT or not isinstance(header.get("tensors"), list):
        raise CompressedFileError(f"{path}: the header is not a brainsurgeon model header")
    model = _rebuild(header, path)
    expected = model.state_dict()
    tensors = {}
    for record in header["tensors"]:
        name = record.get("name", "?") if isinstance(record, dict) else "?"
        _check_record(record, name, expected, path)  # before decoding: no huge allocations
        try:
            tensors[name] = decode_tensor(record, _Sections(container, str(path)))
        except BrainsurgeonError as err:
            raise CompressedFileError(f"{path}: tensor {name!r} cannot be decoded: {err}") from None
        except Exception as err:  # any inconsistency of a damaged or edited header
            raise CompressedFileError(
                f"{path}: tensor {name!r} does not match its sections ({type(err).__name__}: "
                f"{first_line(err, 200)}); re-export the file"
            ) from None
    _load_weights(model, tensors, path)
    return Loaded(model.eval(), header, container, len(data), path)


def _check_record(record: Any, name: Any, expected: dict, path: Path) -> None:
    """A tensor record must name a tensor of the model, with the model's shape."""
    if not isinstance(record, dict) or not isinstance(name, str) or name not in expected:
        raise CompressedFileError(
            f"{path}: the header lists a tensor {name!r} that the model does not have; "
            "the file is damaged or was edited"
        )
    shape = record.get("shape")
    want = list(expected[name].shape)
    if not isinstance(shape, list) or shape != want:
        raise CompressedFileError(
            f"{path}: tensor {name!r} has shape {shape!r} in the header but the model's is "
            f"{want}; the file is damaged or was edited"
        )


class _Sections(dict):
    """Section lookup that names a missing section instead of raising a bare KeyError."""

    def __init__(self, container: Container, source: str) -> None:
        super().__init__()
        self._container, self._source = container, source

    def __getitem__(self, name: str) -> bytes:
        return section(self._container, name, self._source)


def _rebuild(header: dict[str, Any], path: Path) -> nn.Module:
    from ..models import build_from_spec

    try:
        model = build_from_spec(header["model"])
        state.apply_edits(model, header.get("edits", []))
    except BrainsurgeonError as err:
        raise CompressedFileError(f"{path}: cannot rebuild the model: {err}") from None
    except Exception as err:  # a spec that does not build is a damaged or foreign header
        raise CompressedFileError(f"{path}: cannot rebuild the model ({first_line(err)})") from None
    state.set_spec(model, header["model"])
    for rec in header.get("edits", []):
        model.__dict__.setdefault(state.EDITS_ATTR, []).append(rec)
    return model


def _load_weights(model: nn.Module, tensors: dict, path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or extra or wrong:
        parts = [
            f"{label}: {', '.join(keys[:5])}"
            for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
            if keys
        ]
        raise CompressedFileError(
            f"{path}: the tensors do not match the model in its header ({'; '.join(parts)}); "
            "the file is damaged or was edited"
        )
    model.load_state_dict(tensors, strict=True)
