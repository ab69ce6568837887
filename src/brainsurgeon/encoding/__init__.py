"""Lossless coding of compressed weights: bit packing, sparse positions, Huffman, ANS.

Pure numpy functions (no torch). A container stores each symbol stream as an
:class:`EncodedStream` from :func:`encode_stream`, which picks the smallest codec.
"""

from . import entropy, huffman
from .bitpack import bit_width, pack, packed_size, unpack
from .positions import (
    DEFAULT_INDEX_BITS,
    FORMATS,
    default_index_bits,
    dense_positions,
    gap_decode,
    gap_encode,
    mask_pack,
    mask_unpack,
    position_bits,
)
from .streams import (
    CODECS,
    DEFAULT_CODECS,
    Codec,
    EncodedStream,
    decode_stream,
    encode_stream,
    entropy_bits,
    raw_width,
)
from .tables import pack_table, unpack_table

__all__ = [
    "CODECS",
    "DEFAULT_CODECS",
    "DEFAULT_INDEX_BITS",
    "FORMATS",
    "Codec",
    "EncodedStream",
    "bit_width",
    "decode_stream",
    "default_index_bits",
    "dense_positions",
    "encode_stream",
    "entropy",
    "entropy_bits",
    "gap_decode",
    "gap_encode",
    "huffman",
    "mask_pack",
    "mask_unpack",
    "pack",
    "pack_table",
    "packed_size",
    "position_bits",
    "raw_width",
    "unpack",
    "unpack_table",
]
