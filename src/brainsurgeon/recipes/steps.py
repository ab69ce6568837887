"""Recipe step kinds: one registry (``STEPS``), one :class:`StepKind` per kind.

A kind knows its options (a frozen config class: the recipe's keys are its fields, checked
strictly), how to build the config from a recipe's options, and how to run it on the
recipe's current model. Register another with::

    STEPS.register("mystep", "one line for `brainsurgeon run --help`")(
        StepKind("mypackage_module:MyConfig", run=my_run, example={"epochs": 1})
    )

Each ``run(ctx, cfg)`` changes ``ctx.model`` in place (or replaces it) and returns the step's
record (JSON-able); the runner adds the evaluation, the timing and the history entry.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..data.core import DataBundle
from ..errors import ConfigError
from ..registry import Registry


@dataclass
class StepContext:
    """What a step works on: the current model, the data, where the start run was saved
    (``start``: a distillation teacher), and the run's ``compression`` record to extend."""

    model: nn.Module
    data: DataBundle
    device: torch.device
    progress: bool = True
    start: Path | None = None
    compression: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepKind:
    """A recipe step: ``config`` (``"module:Class"`` under ``brainsurgeon``, imported when
    first used: the :class:`Config` class that is the options' schema), ``run(ctx, cfg) ->
    record``, ``defaults`` filled in before the recipe's options, ``extra`` options
    outside the config (name -> type hint, read by ``run``), and ``example``: small options
    the contract tests run."""

    config: str
    run: Callable[[StepContext, Any], dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    example: dict[str, Any] = field(default_factory=dict)

    def config_class(self) -> type:
        module, _, name = self.config.partition(":")
        return getattr(importlib.import_module(f"brainsurgeon.{module}"), name)

    def fields(self) -> dict[str, Any]:
        """Option name -> type hint."""
        cls = self.config_class()
        hints = typing.get_type_hints(cls)
        return {**{f.name: hints[f.name] for f in dataclasses.fields(cls)}, **self.extra}

    def build(self, options: dict[str, Any], *, seed: int) -> StepOptions:
        """The validated options (the recipe seed fills ``seed`` where the config has one)."""
        cls = self.config_class()
        names = {f.name for f in dataclasses.fields(cls)}
        merged = {**({"seed": seed} if "seed" in names else {}), **options}
        config = cls.from_dict({k: v for k, v in merged.items() if k in names})
        return StepOptions(config, {k: merged[k] for k in self.extra if k in merged})


@dataclass(frozen=True)
class StepOptions:
    """A step's validated config and its extra options."""

    config: Any
    extra: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.extra.get(key, getattr(self.config, key, None))


class QuantizeStep(StepKind):
    """``quantize``: ``method`` picks the method's own config (``quant_config``); the options
    are the fields of every method's config, and the chosen config refuses the others."""

    def fields(self) -> dict[str, Any]:
        from ..quantization import QUANTIZERS

        out: dict[str, Any] = {"method": str}
        for name in QUANTIZERS:
            cls = QUANTIZERS.get(name).config
            hints = typing.get_type_hints(cls)
            out.update({f.name: hints[f.name] for f in dataclasses.fields(cls)})
        return out

    def build(self, options: dict[str, Any], *, seed: int) -> StepOptions:
        from ..quantization import DEFAULT_METHOD, quant_config

        options = {"seed": seed, **options}
        method = options.pop("method", DEFAULT_METHOD)
        return StepOptions(quant_config(method, **options), {"method": method})


STEPS: Registry[StepKind] = Registry("recipe step")


@dataclass(frozen=True)
class EvaluateConfig(Config):
    """Options of the ``evaluate`` step: the ``split`` to report."""

    split: str = "test"

    def __post_init__(self) -> None:
        if self.split not in ("train", "val", "test"):
            raise ConfigError(f"split must be train, val or test, got {self.split!r}")


@dataclass(frozen=True)
class ExportConfig(Config):
    """Options of the ``export`` step (the recipe's OUT/model.bsc): ``index_bits`` (CSR gap
    width: None = 5 for fc and 8 for conv, ``auto`` = the smallest of 2..10) and ``codec``
    (auto | raw | huffman | ans)."""

    index_bits: int | str | None = None
    codec: str = "auto"

    def __post_init__(self) -> None:
        from ..container.writer import check_index_bits

        check_index_bits(self.index_bits)
        if self.codec not in ("auto", "raw", "huffman", "ans"):
            raise ConfigError(f"codec must be auto, raw, huffman or ans, got {self.codec!r}")

    def export_options(self) -> dict[str, Any]:
        codecs = None if self.codec == "auto" else ("raw", self.codec)
        return {"index_bits": self.index_bits, "codecs": codecs}


def _train(ctx: StepContext, opts: StepOptions) -> dict[str, Any]:
    from ..training import fit

    torch.manual_seed(opts.config.seed)
    history = fit(ctx.model, ctx.data, opts.config, device=ctx.device, progress=ctx.progress)
    return {"epochs": len(history), "train_loss": history[-1]["train_loss"] if history else None}


def _finetune(ctx: StepContext, opts: StepOptions) -> dict[str, Any]:
    from ..pipeline import finetune

    history = finetune(ctx.model, ctx.data, opts.config, device=ctx.device, progress=ctx.progress)
    return {"epochs": len(history), "train_loss": history[-1]["train_loss"] if history else None}


def _prune(ctx: StepContext, opts: StepOptions) -> dict[str, Any]:
    from ..pruning import prune

    result = prune(ctx.model, opts.config, ctx.data, device=ctx.device, progress=ctx.progress)
    ctx.compression["pruning"] = {
        "config": opts.config.to_dict(),
        "sparsity": result.sparsity,
        "total_sparsity": result.total_sparsity,
    }
    return {
        "total_sparsity": result.total_sparsity,
        "predicted_damage": result.predicted_damage,
        "rounds": result.rounds,
    }


def _quantize(ctx: StepContext, opts: StepOptions) -> dict[str, Any]:
    from ..quantization import quantize

    result = quantize(ctx.model, opts.config, ctx.data, device=ctx.device, progress=ctx.progress)
    ctx.compression["quantization"] = result.summary()
    return dict(result.summary())


def _factorize(ctx: StepContext, opts: StepOptions) -> dict[str, Any]:
    from ..factorization import factorize

    result = factorize(ctx.model, opts.config, ctx.data)
    summary = result.to_dict()
    ctx.compression["factorization"] = summary
    keys = ("weights_before", "weights_after", "weight_ratio")
    return {**{k: summary[k] for k in keys}, "layers": summary["layers"]}


def _distill(ctx: StepContext, opts: StepOptions) -> dict[str, Any]:
    """Train the current model to imitate ``teacher``: ``start`` (the recipe's trained or
    loaded model) or a run directory."""
    from .. import runs
    from ..distillation import distill

    teacher_path = opts["teacher"] or "start"
    path = ctx.start if teacher_path == "start" else Path(teacher_path)
    if path is None or not Path(path).is_dir():
        raise ConfigError(
            f"teacher {teacher_path!r} is not a run directory; use 'start' (the recipe's "
            "starting model) or the path of a run"
        )
    teacher = runs.load_run(path, device=ctx.device).model
    result = distill(
        teacher, ctx.model, opts.config, ctx.data, device=ctx.device, progress=ctx.progress
    )
    # "start" names OUT/start; the run is built under a temporary name until it is complete
    ctx.compression["distillation"] = {"config": opts.config.to_dict(), "teacher": teacher_path}
    return {"epochs": len(result.history), "teacher": teacher_path, "transfer": result.transfer}


def _evaluate(ctx: StepContext, opts: StepOptions) -> dict[str, Any]:
    return {}


def _export(ctx: StepContext, opts: StepOptions) -> dict[str, Any]:
    """Choose how OUT/model.bsc is encoded (the file is written when the recipe ends)."""
    ctx.compression["export"] = {"options": opts.config.export_options()}
    return {"index_bits": opts.config.index_bits, "codec": opts.config.codec}


def _kind(name: str, description: str, config: str, run, **options: Any) -> None:
    STEPS.register(name, description)(StepKind(config, run, **options))


_kind(
    "train",
    "train the model (TrainConfig fields)",
    "training:TrainConfig",
    _train,
    example={"epochs": 1},
)
_kind(
    "prune", "prune it (PruneConfig fields)", "pruning:PruneConfig", _prune, example={"amount": 0.5}
)
STEPS.register("quantize", "quantize it (method + that method's config fields)")(
    QuantizeStep("quantization:QuantBase", _quantize, example={"method": "uniform", "bits": 8})
)
_kind(
    "finetune",
    "fine-tune it (FinetuneConfig fields; lr 0.005 halved every 2 epochs)",
    "pipeline:FinetuneConfig",
    _finetune,
    example={"epochs": 1},
)
_kind(
    "factorize",
    "swap layers for truncated-SVD pairs (FactorizeConfig fields)",
    "factorization:FactorizeConfig",
    _factorize,
    example={"energy": 0.9},
)
_kind(
    "distill",
    "train it to imitate a teacher, 'start' or a run (DistillConfig fields)",
    "distillation:DistillConfig",
    _distill,
    extra={"teacher": str},
    example={"epochs": 1, "shift": 0, "noise": 0.0},
)
_kind(
    "export",
    "encode OUT/model.bsc with these options (index_bits, codec); it is always written",
    "recipes.steps:ExportConfig",
    _export,
    example={"index_bits": "auto"},
)
_kind(
    "evaluate",
    "report a split's accuracy (split: train | val | test)",
    "recipes.steps:EvaluateConfig",
    _evaluate,
    example={"split": "val"},
)
