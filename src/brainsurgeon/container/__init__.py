"""Compressed model files (``.bsc``): export a compressed model, load it back, read its bytes.

>>> result = export(model, "model.bsc")   # doctest: +SKIP
>>> loaded = read("model.bsc").model      # doctest: +SKIP
"""

from .format import FORMAT_VERSION, CompressedFileError
from .reader import Loaded, is_compressed_file, read
from .table import ByteTable, byte_table
from .writer import ExportResult, encode, export

__all__ = [
    "FORMAT_VERSION",
    "ByteTable",
    "byte_table",
    "encode",
    "CompressedFileError",
    "ExportResult",
    "Loaded",
    "export",
    "is_compressed_file",
    "read",
]
