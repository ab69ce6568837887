"""The options every quantization method shares, and the option groups some of them share.

Each method has its own frozen config (``methods/<name>.py``) deriving from :class:`QuantBase`
through the groups it needs, so every default is written once::

    QuantBase        bits, per_layer_bits, layers, exclude, include_bias, finetune_*, ...
      ScaleOptions   + granularity                         binary, ternary
        GridOptions  + symmetric, range, percentile        uniform, gptq
      ClusterOptions + max_iter                            kmeans
        VectorOptions + block_width                        product, residual

A method config names its method and its bits in class attributes (``METHOD``, ``BITS``,
``DEFAULT_BITS``, ``FINETUNE_LR``); this module imports nothing from the registry.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..config import Config
from ..errors import ConfigError, check_positive_int
from ..memory import parse_bytes

GRANULARITIES = ("per-tensor", "per-channel")
RANGES = ("minmax", "percentile", "mse")


def check_bits(method: str, bits: Any, bits_range: tuple[int, int], where: str) -> int:
    """``bits`` as an int inside ``bits_range`` (inclusive); else a ConfigError naming ``where``."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ConfigError(f"bits for {where} must be an integer, got {bits!r}; e.g. fc=5,conv=8")
    lo, hi = bits_range
    if not lo <= bits <= hi:
        want = f"{lo}" if lo == hi else f"between {lo} and {hi}"
        raise ConfigError(
            f"{method} needs bits {want}, got {bits} ({where}); "
            f"pass --bits {lo if lo == hi else f'{lo}..{hi}'}"
        )
    return bits


def one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
    """A ConfigError listing ``valid`` unless ``value`` is one of them."""
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def key_matches(key: str, name: str, layer: str) -> bool:
    """A per-layer key matches a tensor ``name`` ("fc1.weight") of ``layer`` ("fc1") exactly,
    by prefix ("fc" matches fc1 and fc2) or as a glob ("*.out_proj")."""
    return (
        name == key
        or layer == key
        or name.startswith(key)
        or fnmatch.fnmatchcase(name, key)
        or fnmatch.fnmatchcase(layer, key)
    )


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    value = (value,) if isinstance(value, str) else tuple(value or ())
    if not all(isinstance(p, str) and p for p in value):
        raise ConfigError(f"{name} must be glob patterns (strings), got {value!r}; e.g. 'fc3'")
    return value


@dataclass(frozen=True)
class QuantBase(Config):
    """Options of every method.

    ``bits``: bits per code (None: the method's ``DEFAULT_BITS``). ``per_layer_bits``:
    ``{"fc": 5, "conv": 8}`` overrides, by tensor or layer name, prefix or glob (the longest
    key wins). ``layers`` / ``exclude``: glob patterns on layer or tensor names choosing the
    tensors from the adapter's table (:func:`brainsurgeon.models.adapters.compressible`).
    ``include_bias``: biases too (one scale per bias vector, never per entry).
    ``finetune_epochs`` > 0 fine-tunes after quantizing (codebooks of codebook methods, the
    float weights through a straight-through estimator for the others) with SGD at
    ``finetune_lr`` (None: the method's ``FINETUNE_LR``), ``batch_size``, ``seed``.
    ``max_memory`` (e.g. ``"2GB"``): the calibration statistics' chunks follow this budget.
    """

    METHOD: ClassVar[str] = ""
    BITS: ClassVar[tuple[int, int]] = (1, 8)
    DEFAULT_BITS: ClassVar[int] = 8
    FINETUNE_LR: ClassVar[float] = 0.01

    bits: int | None = None
    per_layer_bits: dict[str, int] = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_bias: bool = False
    finetune_epochs: int = 0
    finetune_lr: float | None = None
    batch_size: int = 64
    seed: int = 0
    max_memory: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _patterns("layers", self.layers))
        object.__setattr__(self, "exclude", _patterns("exclude", self.exclude))
        if self.bits is not None:
            check_bits(self.METHOD, self.bits, self.BITS, "--bits")
        if not isinstance(self.per_layer_bits, dict):
            raise ConfigError(f"per_layer_bits must map names to bits, got {self.per_layer_bits!r}")
        for key, bits in self.per_layer_bits.items():
            check_bits(self.METHOD, bits, self.BITS, key)
        check_positive_int("finetune_epochs", self.finetune_epochs, allow_zero=True)
        check_positive_int("batch_size", self.batch_size)
        parse_bytes(self.max_memory)
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise ConfigError(f"finetune_lr must be > 0, got {self.finetune_lr}")

    @property
    def lr(self) -> float:
        """The fine-tuning learning rate: ``finetune_lr`` or the method's default."""
        return self.FINETUNE_LR if self.finetune_lr is None else self.finetune_lr

    def bits_for(self, name: str, layer: str) -> int:
        """Bits of tensor ``name`` of ``layer``: the longest matching per-layer key, else
        ``bits``, else ``DEFAULT_BITS``."""
        keys = [k for k in self.per_layer_bits if key_matches(k, name, layer)]
        if keys:
            return self.per_layer_bits[max(keys, key=len)]
        return self.DEFAULT_BITS if self.bits is None else self.bits

    @classmethod
    def options(cls) -> list[str]:
        """The option names of this method's config."""
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.METHOD, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantBase:
        data = dict(data)
        method = data.pop("method", cls.METHOD)
        if method != cls.METHOD:
            raise ConfigError(
                f"{cls.__name__} is the config of {cls.METHOD!r}, got method {method!r}; build "
                "it with brainsurgeon.quantization.quant_config(method, **options)"
            )
        return super().from_dict(data)


@dataclass(frozen=True)
class ScaleOptions(QuantBase):
    """``granularity``: one scale per output channel (row of the matrix view) or per tensor."""

    granularity: str = "per-channel"

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("granularity", self.granularity, GRANULARITIES)

    @property
    def per_channel(self) -> bool:
        return self.granularity == "per-channel"


@dataclass(frozen=True)
class GridOptions(ScaleOptions):
    """A uniform grid: ``symmetric`` (zero point 0) and the ``range`` of weights it covers:
    min/max, the ``(100 - percentile, percentile)`` quantiles, or the clipping of least
    squared error ("mse"). ``group_size`` > 0: one grid per run of that many input columns
    of each output channel (the "block" granularity of GPTQ's group size; 0 = whole rows)."""

    symmetric: bool = False
    range: str = "minmax"
    percentile: float = 99.9
    group_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("range", self.range, RANGES)
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise ConfigError(f"group_size must be an integer, got {self.group_size!r}")
        if self.group_size < 0:
            raise ConfigError(f"group_size must be >= 0 (0 = whole rows), got {self.group_size}")
        if self.group_size and not self.per_channel:
            raise ConfigError(
                "group_size needs granularity='per-channel' (groups split each channel's row)"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(
                f"percentile must lie in (50, 100], got {self.percentile}; e.g. percentile=99.9"
            )


@dataclass(frozen=True)
class ClusterOptions(QuantBase):
    """k-means: ``max_iter`` Lloyd iterations at most."""

    max_iter: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("max_iter", self.max_iter)


@dataclass(frozen=True)
class VectorOptions(ClusterOptions):
    """Vector quantizers: sub-vectors of ``block_width`` d (must divide the fan-in)."""

    block_width: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("block_width", self.block_width)
