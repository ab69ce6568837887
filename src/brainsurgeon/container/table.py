"""The byte table of a compressed file, computed from its header and section lengths alone.

Every section belongs to one tensor and one column, so the rows plus the header plus the
framing add up to the file size exactly:

* ``positions``: where the stored entries are (CSR gaps, the bitmask);
* ``codes``: one code (or float32 value) per stored weight, a vector quantizer's indices;
* ``table``: what the codes index (codebooks, scales, zero points, per-row counts);
* ``other``: tensors stored raw (biases, norm statistics, buffers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .format import FRAMING_BYTES, Container

POSITION_PARTS = ("gaps", "mask")
CODE_PARTS = ("codes", "values", "indices")


@dataclass(frozen=True)
class ByteTable:
    """``file_bytes`` on disk, ``fp32_bytes`` (4 bytes a parameter), per-tensor ``rows`` and
    the ``header_bytes`` and framing they add up with; ``path`` where it was written."""

    path: Path | None
    file_bytes: int
    fp32_bytes: int
    rows: list[dict[str, Any]]
    header_bytes: int
    framing_bytes: int = FRAMING_BYTES

    @property
    def ratio(self) -> float:
        return self.fp32_bytes / max(self.file_bytes, 1)

    def weights(self) -> dict[str, float]:
        """Bits per nonzero weight (codes + tables) and per index over the encoded weights."""
        rows = [r for r in self.rows if r["encoding"] == "weight"]
        nnz = max(sum(r["nonzeros"] for r in rows), 1)
        return {
            "bits_per_weight": 8 * sum(r["codes"] + r["table"] for r in rows) / nnz,
            "bits_per_index": 8 * sum(r["positions"] for r in rows) / nnz,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": None if self.path is None else str(self.path),
            "file_bytes": self.file_bytes,
            "fp32_bytes": self.fp32_bytes,
            "ratio": self.ratio,
            "header_bytes": self.header_bytes,
            "framing_bytes": self.framing_bytes,
            **self.weights(),
            "rows": self.rows,
        }


def byte_table(container: Container, file_bytes: int, path: Path | None = None) -> ByteTable:
    """The table of a parsed file."""
    lengths = {name: len(data) for name, data in container.sections.items()}
    try:
        rows = [_row(rec, lengths) for rec in container.header["tensors"]]
        fp32 = 4 * int(container.header.get("parameters", sum(r["params"] for r in rows)))
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # an edited header
        from .format import CompressedFileError

        raise CompressedFileError(
            f"{path or 'the file'}: the header's tensor records are damaged "
            f"({type(err).__name__}: {err}); re-export the file"
        ) from None
    return ByteTable(path, file_bytes, fp32, rows, container.header_bytes)


def _column(part: str, encoding: str) -> str:
    if encoding == "raw":
        return "other"
    if part in POSITION_PARTS:
        return "positions"
    return "codes" if part in CODE_PARTS else "table"


def _row(rec: dict[str, Any], lengths: dict[str, int]) -> dict[str, Any]:
    name = rec["name"]
    params = 1
    for d in rec["shape"]:
        params *= int(d)
    row: dict[str, Any] = {"tensor": name, "layer": name.rpartition(".")[0]}
    row.update(kind=rec.get("kind", "other"), encoding=rec["encoding"], params=params)
    row.update(positions=0, codes=0, table=0, other=0)
    prefix = f"{name}/"
    for section, size in lengths.items():
        if section.startswith(prefix) and "/" not in section[len(prefix) :]:
            row[_column(section[len(prefix) :], rec["encoding"])] += size
    row["bytes"] = row["positions"] + row["codes"] + row["table"] + row["other"]
    if rec["encoding"] != "weight":
        row.update(nonzeros=params, format="raw", values=rec["dtype"])
        return row
    pos = rec["positions"]
    nnz = int(rec.get("nonzeros", pos["entries"]))
    row.update(nonzeros=nnz, format=pos["format"] + (str(pos["width"]) if pos["width"] else ""))
    row["values"] = rec["values"]["model"]
    row["codecs"] = {k: v["codec"] for k, v in rec["streams"].items()}
    row["bits_per_weight"] = 8 * (row["codes"] + row["table"]) / max(nnz, 1)
    row["bits_per_index"] = 8 * row["positions"] / max(nnz, 1)
    return row
