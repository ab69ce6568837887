"""Options of :func:`brainsurgeon.quantization.quantize` as one frozen config."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Config
from ..errors import ConfigError, check_positive_int

GRANULARITIES = ("per-tensor", "per-channel")
RANGES = ("minmax", "percentile", "mse")
INITS = ("linear", "random", "density")


@dataclass(frozen=True)
class QuantConfig(Config):
    """What to quantize and how.

    ``method``: a name from ``QUANTIZERS`` (binary, ternary, uniform, kmeans, product,
    residual, gptq). ``bits``: bits per code (``None`` = the method's default; for product
    and residual quantization ``k = 2**bits`` centroids per codebook). ``per_layer_bits``:
    ``{"fc": 5, "conv": 8}`` overrides, matched by exact module name or name prefix (the
    longest key wins). ``skip``: module names or prefixes left in float.

    ``granularity``, ``symmetric``, ``range`` (+ ``percentile``): the grid of uniform, gptq,
    binary and ternary (one scale per output channel or per tensor); codebook methods
    (kmeans, product, residual) always keep one codebook set per layer. ``init``: k-means
    initialisation. ``block_width``: sub-vector width ``d`` of product / residual
    quantization (must divide the layer's fan-in). ``stages``: residual stages ``t``.
    ``samples``: calibration samples (gptq). ``finetune_epochs`` > 0 fine-tunes after
    quantizing: the centroids of codebook methods, the float weights through a
    straight-through estimator (QAT) for the others; ``finetune_lr`` (SGD, momentum 0.9,
    cosine) defaults to the method's ``finetune_lr``: 1e-4 for kmeans and residual, whose
    centroid gradient sums over ~n/k weights, 1e-3 for product, 1e-2 for the STE methods.
    """

    method: str = "kmeans"
    bits: int | None = None
    per_layer_bits: dict[str, int] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    granularity: str = "per-channel"
    symmetric: bool = False
    range: str = "minmax"
    percentile: float = 99.9
    init: str = "linear"
    block_width: int = 4
    stages: int = 2
    samples: int = 1024
    damp: float = 0.01
    finetune_epochs: int = 0
    finetune_lr: float | None = None
    batch_size: int = 64
    max_iter: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        from .registry import QUANTIZERS

        quantizer = QUANTIZERS.get(self.method)  # unknown names fail listing the valid ones
        _one_of("granularity", self.granularity, GRANULARITIES)
        _one_of("range", self.range, RANGES)
        _one_of("init", self.init, INITS)
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(
                f"percentile must lie in (50, 100], got {self.percentile}; e.g. percentile=99.9"
            )
        for name in ("block_width", "stages", "samples", "batch_size", "max_iter"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("finetune_epochs", self.finetune_epochs, allow_zero=True)
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise ConfigError(f"finetune_lr must be > 0, got {self.finetune_lr}")
        if not 0.0 <= self.damp < 1.0:
            raise ConfigError(f"damp must lie in [0, 1), got {self.damp}; e.g. damp=0.01")
        for key, bits in {"--bits": self.bits, **self.per_layer_bits}.items():
            if bits is None:
                continue
            if isinstance(bits, bool) or not isinstance(bits, int):
                raise ConfigError(
                    f"bits for {key!r} must be an integer, got {bits!r}; e.g. fc=5,conv=8"
                )
            lo, hi = quantizer.bits_range
            if not lo <= bits <= hi:
                want = f"{lo}" if lo == hi else f"between {lo} and {hi}"
                raise ConfigError(
                    f"{self.method} needs bits {want}, got {bits} ({key}); "
                    f"pass --bits {lo if lo == hi else f'{lo}..{hi}'}"
                )


def _one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
