"""Compressed model files (``.bsc``): export a compressed model, load it back, read its bytes.

>>> result = export(model, "model.bsc")   # doctest: +SKIP
>>> loaded = read("model.bsc").model      # doctest: +SKIP
"""

from .format import FORMAT_VERSION, CompressedFileError
from .reader import Loaded, is_compressed_file, read
from .writer import ExportResult, export

__all__ = [
    "FORMAT_VERSION",
    "CompressedFileError",
    "ExportResult",
    "Loaded",
    "export",
    "is_compressed_file",
    "read",
]
