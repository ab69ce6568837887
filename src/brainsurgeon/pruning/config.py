"""``PruneConfig``: every option of :func:`brainsurgeon.prune`, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..errors import ConfigError, check_fraction, check_positive_int
from ..memory import parse_bytes
from .criteria import CRITERIA, Solver, make_criterion
from .schedules import SCHEDULES, SPACINGS
from .selection import SELECTORS

FIXED_SPARSITY_SCHEMES = ("threshold", "nm")  # the sparsity follows from the rule, not amount


@dataclass(frozen=True)
class PruneConfig(Config):
    """Options of :func:`brainsurgeon.prune`.

    What to remove: ``granularity`` ``element`` (single weights) or whole units: ``neuron``
    (Linear outputs), ``channel`` (conv filters), ``head`` (attention heads), scored by a unit
    criterion (:data:`brainsurgeon.structured.UNIT_CRITERIA`; ``magnitude`` = ``l2``), with
    ``amount`` the fraction of units removed (``brainsurgeon.shrink`` then cuts them out).
    What to score: ``criterion`` (see ``brainsurgeon criteria``) with ``criterion_options``,
    computed on ``samples`` calibration samples of the training split (``batch_size`` at a
    time; ``max_memory``, e.g. ``"2GB"``: the statistics' chunks follow this budget).
    What to select: ``scheme`` (``global | per-layer | class-distribution | threshold | nm``)
    to ``amount`` (final sparsity over the eligible tensors, in (0, 1));
    ``layer_sparsity`` gives per-layer targets instead (scheme ``per-layer``; unlisted layers
    get ``amount``); ``threshold``, ``nm`` and ``lam`` parametrise their schemes (``lam``
    given: the sparsity follows from it). Eligible tensors: Linear/Conv weights, plus biases
    with ``include_bias``; the first and last layers can be excluded; ``layers`` / ``exclude``
    are glob patterns on layer or tensor names (``"encoder.*"``, ``"*.out_proj"``). Solvers
    that select inside their solve (layer-wise OBS) prune every layer to ``amount`` under
    ``global`` too.

    When: ``schedule`` (``oneshot | iterative | gradual | steps``) over ``rounds``;
    ``spacing`` (iterative: ``geometric | linear``); ``initial_amount`` (gradual's ``s_i``,
    steps' ``X``); ``obs_steps`` splits each round into that many prune steps with the scores
    recomputed in between (OBS's removal in batches). Fine-tuning after each round:
    ``finetune_epochs`` of SGD at ``finetune_lr`` halved every 2 epochs (``finetune_schedule``
    ``step``; ``cosine`` anneals it to 0 each round) with ``finetune_weight_decay``, Han's
    dropout adjustment (``adjust_dropout``) and optional ``l1`` / ``l2`` / ``group_lasso``
    penalties; ``final_finetune_epochs`` (default: ``finetune_epochs``) after the last round,
    Han's longer final retraining.
    """

    criterion: str = "magnitude"
    criterion_options: dict[str, Any] = field(default_factory=dict)
    granularity: str = "element"
    amount: float = 0.5
    scheme: str = "global"
    schedule: str = "oneshot"
    rounds: int = 1
    spacing: str = "geometric"
    initial_amount: float = 0.0
    obs_steps: int = 1
    samples: int = 1000
    batch_size: int = 256
    max_memory: str | None = None
    seed: int = 0
    layer_sparsity: dict[str, float] | None = None
    include_bias: bool = False
    include_first: bool = True
    include_last: bool = True
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    nm: tuple[int, int] = (2, 4)
    threshold: float | None = None
    lam: float | None = None
    finetune_epochs: int = 0
    finetune_lr: float = 0.005
    finetune_batch_size: int = 64
    finetune_schedule: str = "step"
    finetune_weight_decay: float = 0.0
    final_finetune_epochs: int | None = None
    adjust_dropout: bool = True
    l1: float = 0.0
    l2: float = 0.0
    group_lasso: float = 0.0

    def __post_init__(self) -> None:
        if self.granularity == "element":
            make_criterion(self.criterion, **self.criterion_options)  # validates name, options
        else:
            from ..structured.api import check_granularity

            check_granularity(self.granularity, self.criterion, self.criterion_options)
            if self.scheme not in ("global", "per-layer"):
                raise ConfigError(
                    f"structured pruning selects units globally or per layer, not by "
                    f"{self.scheme!r}; use --scheme global or per-layer"
                )
        SELECTORS.get(self.scheme)
        SCHEDULES.get(self.schedule)
        if self.scheme not in FIXED_SPARSITY_SCHEMES and self.lam is None:
            check_fraction("amount", self.amount)
        parse_bytes(self.max_memory)
        for name in ("rounds", "obs_steps", "samples", "batch_size", "finetune_batch_size"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("finetune_epochs", self.finetune_epochs, allow_zero=True)
        if self.final_finetune_epochs is not None:
            check_positive_int("final_finetune_epochs", self.final_finetune_epochs, allow_zero=True)
        self.finetune_config(1)  # validates the schedule and the weight decay
        if self.spacing not in SPACINGS:
            raise ConfigError(f"unknown spacing {self.spacing!r}; valid: {', '.join(SPACINGS)}")
        if not 0.0 <= self.initial_amount < 1.0:
            raise ConfigError(f"initial_amount must lie in [0, 1), got {self.initial_amount}")
        if not self.finetune_lr > 0:
            raise ConfigError(f"finetune_lr must be > 0, got {self.finetune_lr}; e.g. 0.005")
        for name in ("l1", "l2", "group_lasso"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        self._check_schedule()
        self._check_scheme()

    def _check_schedule(self) -> None:
        if self.schedule == "oneshot" and self.rounds != 1:
            raise ConfigError(
                f"rounds={self.rounds} needs a multi-round schedule; use "
                "schedule 'iterative', 'gradual' or 'steps' (or rounds=1)"
            )
        fixed = self.scheme in FIXED_SPARSITY_SCHEMES or self.lam is not None
        if fixed and self.schedule != "oneshot":
            raise ConfigError(
                f"scheme {self.scheme!r} with a fixed rule prunes to one sparsity; "
                f"it cannot follow schedule {self.schedule!r}; use 'oneshot'"
            )

    def _check_scheme(self) -> None:
        if self.granularity != "element":
            return  # unit selection: global or per-layer, checked above
        if issubclass(CRITERIA.get(self.criterion), Solver) and self.scheme not in (
            "global",
            "per-layer",
            "nm",
        ):
            raise ConfigError(
                f"criterion {self.criterion!r} selects inside its per-layer solve; use scheme "
                f"'per-layer' (or 'global', pruned per layer) or 'nm', not {self.scheme!r}"
            )
        if self.scheme == "threshold" and self.threshold is None:
            raise ConfigError("scheme 'threshold' needs threshold=T (prune scores below T)")
        if self.scheme == "nm":
            n, m = self.nm
            if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
                raise ConfigError(f"nm must be integers 0 < N < M, got {n}:{m}; e.g. (2, 4)")
        if self.lam is not None and self.scheme != "class-distribution":
            raise ConfigError(
                "lam is the class-distribution threshold factor; set "
                "scheme='class-distribution' or drop lam"
            )
        if self.lam is not None and not self.lam > 0:
            raise ConfigError(f"lam must be > 0, got {self.lam}")
        if self.layer_sparsity is not None:
            if self.scheme != "per-layer":
                raise ConfigError("layer_sparsity sets per-layer targets; use scheme='per-layer'")
            for name, value in self.layer_sparsity.items():
                if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                    raise ConfigError(f"layer_sparsity[{name!r}] must lie in [0, 1), got {value!r}")

    @property
    def needs_data(self) -> bool:
        if self.granularity != "element":
            from ..structured.api import unit_criterion_name
            from ..structured.scores import make_unit_criterion

            name = unit_criterion_name(self.criterion)
            crit = make_unit_criterion(name, **self.criterion_options)
            return crit.needs_data or self.finetune_epochs > 0 or bool(self.final_finetune_epochs)
        return (
            CRITERIA.get(self.criterion).needs_data
            or self.finetune_epochs > 0
            or bool(self.final_finetune_epochs)
        )

    def finetune_config(self, round_index: int, *, last: bool = False):
        """The :class:`~brainsurgeon.pipeline.FinetuneConfig` run after round ``round_index``."""
        from ..pipeline.finetune import FinetuneConfig  # the pipeline imports pruning

        epochs = self.finetune_epochs
        if last and self.final_finetune_epochs is not None:
            epochs = self.final_finetune_epochs
        return FinetuneConfig(
            epochs=epochs,
            lr=self.finetune_lr,
            batch_size=self.finetune_batch_size,
            weight_decay=self.finetune_weight_decay,
            schedule=self.finetune_schedule,
            l1=self.l1,
            l2=self.l2,
            seed=self.seed + round_index,
        )
