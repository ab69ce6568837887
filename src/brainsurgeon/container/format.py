"""The compressed model file (``.bsc``): framing, checksums and validation. No pickle.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89BSC\\r\\n\\x1a\\n"  (a text-mode copy or a wrong file fails here)
    8       4     format version (u32)
    12      4     header length H (u32)
    16      4     CRC-32 of the header
    20      H     header: UTF-8 JSON, zlib-compressed; its "sections" list gives each
                  binary section's name, length and CRC-32, in file order
    20+H    ...   the sections, concatenated
    end-32  32    SHA-256 of every byte before it

A reader of version ``N`` refuses a newer file. Every check names the damaged part (magic,
version, header, a section by name, the trailer) in one line: :class:`CompressedFileError`.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from ..errors import BrainsurgeonError

MAGIC = b"\x89BSC\r\n\x1a\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIII")  # magic, version, header length, header crc
TRAILER = 32  # sha256
FRAMING_BYTES = _PREFIX.size + TRAILER


class CompressedFileError(BrainsurgeonError):
    """A compressed model file is damaged, truncated, of another format or too new."""


@dataclass(frozen=True)
class Container:
    """A parsed file: the JSON ``header`` and the binary ``sections`` by name."""

    header: dict[str, Any]
    sections: dict[str, bytes]
    header_bytes: int


def pack(header: dict[str, Any], sections: dict[str, bytes]) -> bytes:
    """The file's bytes for ``header`` (JSON-able) and named binary ``sections`` (in order)."""
    table = [
        {"name": name, "length": len(data), "crc32": zlib.crc32(data)}
        for name, data in sections.items()
    ]
    head = json.dumps({**header, "sections": table}, separators=(",", ":")).encode()
    head = zlib.compress(head, 9)
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head), zlib.crc32(head)) + head
    body += b"".join(sections.values())
    return body + hashlib.sha256(body).digest()


def is_container(prefix: bytes) -> bool:
    """Whether ``prefix`` (the file's first bytes) starts with the magic."""
    return prefix[: len(MAGIC)] == MAGIC


def unpack(data: bytes, source: str = "the file") -> Container:
    """Parse and verify ``data``; :class:`CompressedFileError` naming the damaged part."""
    if len(data) < _PREFIX.size or not is_container(data):
        raise CompressedFileError(
            f"{source} is not a brainsurgeon compressed model (wrong magic bytes); "
            "make one with `brainsurgeon export RUN --out model.bsc`"
        )
    _, version, head_len, head_crc = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION or version == 0:
        raise CompressedFileError(
            f"{source} has format version {version}, this brainsurgeon reads up to "
            f"{FORMAT_VERSION}; upgrade brainsurgeon (or the version field is damaged)"
        )
    start = _PREFIX.size
    if start + head_len + TRAILER > len(data):
        raise CompressedFileError(
            f"{source} is truncated: its header claims {head_len:,} bytes but the file has "
            f"{len(data):,}; re-export it"
        )
    head = data[start : start + head_len]
    if zlib.crc32(head) != head_crc:
        raise CompressedFileError(f"{source}: the header is damaged (CRC mismatch); re-export it")
    header = _parse_header(head, source)
    sections = _split(data, start + head_len, header["sections"], source)
    if hashlib.sha256(data[:-TRAILER]).digest() != data[-TRAILER:]:
        raise CompressedFileError(
            f"{source}: the file checksum (last {TRAILER} bytes) is damaged; re-export it"
        )
    return Container(header=header, sections=sections, header_bytes=head_len)


def _parse_header(head: bytes, source: str) -> dict[str, Any]:
    try:
        header = json.loads(zlib.decompress(head).decode())
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CompressedFileError(f"{source}: the header is not valid JSON ({err})") from None
    table = header.get("sections") if isinstance(header, dict) else None
    ok = isinstance(table, list) and all(
        isinstance(s, dict)
        and isinstance(s.get("name"), str)
        and isinstance(s.get("length"), int)
        and s["length"] >= 0
        and isinstance(s.get("crc32"), int)
        for s in table
    )
    if not ok:
        raise CompressedFileError(f"{source}: the header has no valid section table")
    return header


def _split(data: bytes, offset: int, table: list[dict], source: str) -> dict[str, bytes]:
    """The sections by name, checking the lengths add up and every CRC."""
    total = offset + sum(s["length"] for s in table) + TRAILER
    if total != len(data):
        state = "truncated" if total > len(data) else "longer than its header says"
        raise CompressedFileError(
            f"{source} is {state}: the header's sections need {total:,} bytes, the file has "
            f"{len(data):,}; re-export it"
        )
    sections: dict[str, bytes] = {}
    for entry in table:
        chunk = data[offset : offset + entry["length"]]
        offset += entry["length"]
        if zlib.crc32(chunk) != entry["crc32"]:
            raise CompressedFileError(
                f"{source}: section {entry['name']!r} is damaged (CRC mismatch); re-export it"
            )
        sections[entry["name"]] = chunk
    return sections


def section(container: Container, name: str, source: str = "the file") -> bytes:
    """The section ``name``; a clear error if the header refers to one that is missing."""
    try:
        return container.sections[name]
    except KeyError:
        raise CompressedFileError(
            f"{source}: section {name!r} named in the header is missing; re-export it"
        ) from None
