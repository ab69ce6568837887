"""``brainsurgeon quantize``: quantize a run's weights and write a new run directory.

Methods: binary, ternary, uniform n-bit, k-means weight sharing, product and residual
quantization, second-order (gptq). State is kept as parametrizations, so the new run can be
fine-tuned, pruned further or inspected; ``brainsurgeon quantizers`` lists the methods.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from .common import add_common, emit, parse_kv_list, say, table
from .options import add_loss_option
from .runs_common import add_resume

if typing.TYPE_CHECKING:
    from ..quantization import QuantBase

EPILOG = """\
examples:
  brainsurgeon quantize runs/lenet --method kmeans --bits 5 --out runs/lenet-k5
  brainsurgeon quantize runs/lenet --method kmeans --bits 2 --finetune-epochs 3 --out runs/k2
  brainsurgeon quantize runs/lenet --method uniform --bits 8 --granularity per-tensor --out runs/u8
  brainsurgeon quantize runs/lenet --method gptq --bits 3 --samples 2048 --out runs/gptq3
  brainsurgeon quantize runs/lenet5 --method kmeans --per-layer-bits conv=8,fc=5 --out runs/mix
  brainsurgeon quantize runs/lenet --method product --bits 8 --exclude fc3 --out runs/pq

Each method takes the options of its config (`brainsurgeon quantizers --json` lists them);
an option another method takes is an error. --per-layer-bits matches layer or tensor names
exactly, by prefix or as a glob (the longest key wins); --exclude / --layers are globs;
--finetune-epochs trains the centroids of kmeans/product/residual, and the float weights
through a straight-through estimator (QAT) for uniform/binary/ternary/gptq.
Prune first and quantize the pruned run: pruned weights stay zero and take no centroid.
Fine-tuning epochs are checkpointed under OUT/epochs/ (model, optimizer, RNG states); after
a kill or a NaN, run the same command with --resume (a lower --finetune-lr is allowed)."""

QUANTIZERS_EPILOG = """\
example:
  brainsurgeon quantizers --json"""


# One line of help per option; the methods that take it and its default come from the configs.
HELP = {
    "bits": "bits per code, k = 2^bits centroids (default: the method's)",
    "per_layer_bits": "per-tensor bits by layer or tensor name, prefix or glob, e.g. fc=5,conv=8",
    "layers": "quantize only these layers/tensors (comma-separated globs, e.g. 'encoder.*')",
    "exclude": "layers/tensors left in float (comma-separated globs), e.g. fc3",
    "include_bias": "quantize the biases too (one scale per bias vector)",
    "finetune_epochs": "fine-tune after quantizing (centroids or QAT)",
    "finetune_lr": "fine-tune learning rate (default: the method's; 1e-4 kmeans/residual, "
    "1e-3 product, 1e-2 uniform/binary/ternary/gptq)",
    "batch_size": "fine-tune batch size",
    "max_memory": "memory budget of the statistics chunks, e.g. 2GB or 512MiB (default: none)",
    "sequential": "gptq: calibrate each tensor on the already quantized ones",
    "act_order": "gptq: fix columns in order of decreasing input energy H_jj (desc_act)",
    "calibration": "gptq sequential: auto | blockwise | whole (blocks one at a time, or the "
    "whole model per tensor)",
    "granularity": "per-channel | per-tensor scales",
    "symmetric": "symmetric grid, zero point 0",
    "range": "minmax | percentile | mse",
    "percentile": "for --range percentile",
    "max_iter": "Lloyd iterations at most",
    "init": "kmeans init: linear | random | density",
    "block_width": "sub-vector width d; must divide each fan-in",
    "stages": "residual stages t",
    "samples": "calibration samples",
    "damp": "damping of H (x mean diag)",
    "group_size": "one grid per this many input columns of each channel (0 = whole rows)",
    "unhooked": "error | rtn: tensors whose layer inputs no forward hook sees",
}
FROM_COMMON = ("seed",)  # options the common flags fill
ALIASES = {"exclude": ("--skip",)}


def method_options() -> dict[str, dict[str, Any]]:
    """``{field: {"hint", "default", "methods"}}`` over every registered method config."""
    from ..quantization import QUANTIZERS

    out: dict[str, dict[str, Any]] = {}
    for name in QUANTIZERS:
        cls = QUANTIZERS.get(name).config
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in FROM_COMMON:
                continue
            entry = out.setdefault(f.name, {"hint": hints[f.name], "default": f.default})
            entry.setdefault("methods", []).append(name)
    return out


def _add_option(p: argparse.ArgumentParser, name: str, spec: dict[str, Any], every: int) -> None:
    """``--name`` typed by the field's hint; help lists the methods taking it (all: none)."""
    flags = ["--" + name.replace("_", "-"), *ALIASES.get(name, ())]
    hint = spec["hint"]
    methods = spec["methods"]
    default = spec["default"]
    where = "" if len(methods) == every else f" [{', '.join(methods)}]"
    shown = "" if default in (None, False, dataclasses.MISSING, ()) else f" (default: {default})"
    kw: dict[str, Any] = {
        "default": argparse.SUPPRESS,
        "help": HELP.get(name, name) + shown + where,
    }
    if hint is bool:  # a field that defaults to True gets --no-NAME too
        kw["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
    elif typing.get_origin(hint) in (tuple, dict):
        kw["metavar"] = "NAME=BITS,..." if typing.get_origin(hint) is dict else "PATTERN,..."
    else:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kw["type"] = args[0] if args else hint
    p.add_argument(*flags, **kw)


def register(sub: argparse._SubParsersAction) -> None:
    from ..quantization import DEFAULT_METHOD, QUANTIZERS

    p = sub.add_parser(
        "quantize",
        help="quantize a run's weights (k-means, uniform, gptq, ...)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory to quantize (made by train, prune, ...)")
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=QUANTIZERS.names(),
        help=f"quantizer (default: {DEFAULT_METHOD}); see `brainsurgeon quantizers`",
    )
    for name, spec in method_options().items():
        _add_option(p, name, spec, len(QUANTIZERS))
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    add_resume(p)
    add_loss_option(p)
    add_common(p)
    p.set_defaults(func=run)

    q = sub.add_parser(
        "quantizers",
        help="list quantization methods",
        description="List the quantization methods with their bits and needs.",
        epilog=QUANTIZERS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(q, device=False, seed=False)
    q.set_defaults(func=list_quantizers)


def config_from_args(args: argparse.Namespace) -> QuantBase:
    """The method's config from the given flags; a flag the method does not take is an error."""
    from ..errors import ConfigError
    from ..quantization import QUANTIZERS, quant_config

    specs = method_options()
    given = {name: getattr(args, name) for name in specs if hasattr(args, name)}
    takes = QUANTIZERS.get(args.method).config.options()
    wrong = [name for name in given if name not in takes]
    if wrong:
        flags = ", ".join("--" + n.replace("_", "-") for n in wrong)
        valid = ", ".join("--" + n.replace("_", "-") for n in takes if n not in FROM_COMMON)
        raise ConfigError(f"{flags} does not apply to {args.method}; its options: {valid}")
    for name, value in list(given.items()):
        origin = typing.get_origin(specs[name]["hint"])
        if origin is dict:
            given[name] = parse_kv_list(value, what="--" + name.replace("_", "-"), cast=int)
        elif origin is tuple:
            given[name] = tuple(s.strip() for s in value.split(",") if s.strip())
    return quant_config(args.method, seed=args.seed, **given)


def run(args: argparse.Namespace) -> int:
    from .. import runs
    from ..losses import resolve_loss
    from ..quantization import plan, quantize
    from ..training import evaluate
    from ..training.checkpoint import epoch_checkpoints
    from ..training.evaluation import recorded_loss
    from ..utils import determinism, seed_everything
    from .runs_common import epoch_printer, open_run, resumable_out

    resolve_loss(args.loss)
    config = config_from_args(args)
    out = Path(args.out)
    checkpoints = resumable_out(args)
    if checkpoints is None:
        say(args, f"{out} is finished already; nothing to resume")
        return 0
    parent = open_run(args)
    plan(parent.model, config)  # every check, before any work
    data = parent.data(progress=not args.quiet)
    loss = args.loss or recorded_loss(parent.config)
    before = evaluate(parent.model, data, loss=loss)
    seed_everything(args.seed)
    say(args, f"quantizing {parent.path} with {config.METHOD}")
    with epoch_checkpoints(*checkpoints):
        result = quantize(
            parent.model,
            config,
            data,
            device=args.device,
            loss=loss,
            progress=not args.quiet,
            callback=epoch_printer(args, config.finetune_epochs),
        )
    after = evaluate(parent.model, data, loss=loss)
    summary = result.summary()
    cfg = parent.child_config(
        {
            "step": "quantize",
            "method": config.METHOD,
            "bits_per_weight": summary["bits_per_weight"],
            "test_accuracy": after.get("accuracy"),
        }
    )
    cfg.setdefault("compression", {})["quantization"] = summary
    if loss:
        cfg["loss"] = loss
    cfg.update(determinism(args.device))
    metrics = {
        "test": after,
        "test_accuracy": after.get("accuracy"),
        "test_loss": after["loss"],
        "test_errors": after.get("errors"),
        "parent_test_accuracy": before.get("accuracy"),
        "storage": result.storage,
        "history": result.history,
    }
    runs.save(parent.model.cpu(), out, config=cfg, metrics=metrics, force=True)
    from ..container import encode

    _, file = encode(parent.model, config=cfg, metrics=metrics)
    _print(args, out, before, after, result, file)
    return 0


def _print(args, out, before, after, result, file) -> None:
    from ..training import describe

    storage = result.storage
    rows = [
        [
            r["layer"],
            r["kind"],
            r["bits"],
            r["bits_per_weight"],
            r["index_bytes"],
            r["codebook_bytes"],
            r["ratio"],
        ]
        for r in storage["layers"]
    ]
    total = storage["total"]
    rows.append(
        [
            "total",
            "",
            "",
            total["bits_per_weight"],
            total["index_bytes"],
            total["codebook_bytes"],
            total["ratio"],
        ]
    )
    text = "\n".join(
        [
            table(rows, ["layer", "kind", "bits", "bits/weight", "codes B", "codebook B", "ratio"]),
            "(codes at fixed width, before entropy coding and sparse positions)",
            f"\ntest {describe(before)} -> {describe(after)}; "
            f"compressed file {file.file_bytes:,} bytes as `brainsurgeon export {out}` writes "
            f"it ({file.ratio:.2f}x smaller than fp32 {file.fp32_bytes:,}); wrote {out}",
        ]
    )
    payload = {
        "run": str(out),
        "method": result.config.METHOD,
        "accuracy_before": before.get("accuracy"),
        "accuracy_after": after.get("accuracy"),
        "test_before": before,
        "test_after": after,
        "bits_per_weight": total["bits_per_weight"],
        "ratio": total["ratio"],
        "model_bytes": storage["model_bytes"],
        "model_ratio": storage["model_ratio"],
        "file_bytes": file.file_bytes,
        "file_ratio": file.ratio,
        "layers": storage["layers"],
        "finetune": result.history,
    }
    emit(args, payload, text)


def list_quantizers(args: argparse.Namespace) -> int:
    from ..quantization import QUANTIZERS

    items = []
    for name, description in QUANTIZERS.describe().items():
        method = QUANTIZERS.get(name)
        lo, hi = method.config.BITS
        items.append(
            {
                "name": name,
                "bits": f"{lo}" if lo == hi else f"{lo}-{hi}",
                "default_bits": method.config.DEFAULT_BITS,
                "needs_data": method.handler.needs_data,
                "layers": method.handler.supported(),
                "options": method.config.options(),
                "config": method.config.__name__,
                "description": description,
            }
        )
    lines = [f"{'method':<9} {'bits':>5} {'default':>7} {'data':>4}  description"]
    for i in items:
        data = "yes" if i["needs_data"] else "no"
        lines.append(
            f"{i['name']:<9} {i['bits']:>5} {i['default_bits']:>7} {data:>4}  {i['description']}"
        )
    emit(args, {"quantizers": items}, "\n".join(lines))
    return 0
