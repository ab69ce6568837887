"""``brainsurgeon quantize``: quantize a run's weights and write a new run directory.

Methods: binary, ternary, uniform n-bit, k-means weight sharing, product and residual
quantization, second-order (gptq). State is kept as parametrizations, so the new run can be
fine-tuned, pruned further or inspected; ``brainsurgeon quantizers`` lists the methods.
"""

from __future__ import annotations

import argparse

from .common import add_common, emit, parse_kv_list, say, table

EPILOG = """\
examples:
  brainsurgeon quantize runs/lenet --method kmeans --bits 5 --out runs/lenet-k5
  brainsurgeon quantize runs/lenet --method kmeans --bits 2 --finetune-epochs 3 --out runs/k2
  brainsurgeon quantize runs/lenet --method uniform --bits 8 --granularity per-tensor --out runs/u8
  brainsurgeon quantize runs/lenet --method gptq --bits 3 --samples 2048 --out runs/gptq3
  brainsurgeon quantize runs/lenet5 --method kmeans --per-layer-bits conv=8,fc=5 --out runs/mix
  brainsurgeon quantize runs/lenet --method product --bits 8 --skip fc3 --out runs/pq

--per-layer-bits matches module names exactly or by prefix (the longest key wins);
--finetune-epochs trains the centroids of kmeans/product/residual, and the float weights
through a straight-through estimator (QAT) for uniform/binary/ternary/gptq.
Prune first and quantize the pruned run: pruned weights stay zero and take no centroid."""

QUANTIZERS_EPILOG = """\
example:
  brainsurgeon quantizers --json"""


def register(sub: argparse._SubParsersAction) -> None:
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
        default="kmeans",
        help="quantizer (default: kmeans); see `brainsurgeon quantizers`",
    )
    p.add_argument(
        "--bits",
        type=int,
        default=None,
        help="bits per code, k = 2^bits centroids (default: the method's)",
    )
    p.add_argument(
        "--per-layer-bits",
        default="",
        metavar="NAME=BITS,...",
        help="per-layer bits by module name or prefix, e.g. fc=5,conv=8",
    )
    p.add_argument(
        "--skip",
        default="",
        metavar="NAME,...",
        help="layers (names or prefixes) left in float, e.g. fc3",
    )
    p.add_argument(
        "--granularity",
        default="per-channel",
        help="per-channel | per-tensor scales (uniform, gptq, binary, ternary)",
    )
    p.add_argument("--symmetric", action="store_true", help="symmetric grid, zero point 0")
    p.add_argument("--range", default="minmax", help="minmax | percentile | mse (uniform, gptq)")
    p.add_argument("--percentile", type=float, default=99.9, help="for --range percentile")
    p.add_argument("--init", default="linear", help="kmeans init: linear | random | density")
    p.add_argument(
        "--block-width",
        type=int,
        default=4,
        help="sub-vector width d (product, residual); must divide each fan-in",
    )
    p.add_argument("--stages", type=int, default=2, help="residual stages t")
    p.add_argument("--samples", type=int, default=1024, help="calibration samples (gptq)")
    p.add_argument("--damp", type=float, default=0.01, help="gptq: damping of H (x mean diag)")
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="fine-tune after quantizing (centroids or QAT); default 0",
    )
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="fine-tune learning rate (default: the method's; 1e-4 kmeans/residual, "
        "1e-3 product, 1e-2 uniform/binary/ternary/gptq)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="fine-tune batch size")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
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


def quant_config(args: argparse.Namespace):
    from ..quantization import QuantConfig

    skip = tuple(s.strip() for s in args.skip.split(",") if s.strip())
    return QuantConfig(
        method=args.method,
        bits=args.bits,
        skip=skip,
        per_layer_bits=parse_kv_list(args.per_layer_bits, what="--per-layer-bits", cast=int),
        granularity=args.granularity,
        symmetric=args.symmetric,
        range=args.range,
        percentile=args.percentile,
        init=args.init,
        block_width=args.block_width,
        stages=args.stages,
        samples=args.samples,
        damp=args.damp,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    from .. import runs
    from ..quantization import QUANTIZERS, plan, quantize
    from ..training import evaluate
    from ..utils import seed_everything
    from .runs_common import check_out, epoch_printer, open_run

    config = quant_config(args)
    out = check_out(args.out, args.force)
    parent = open_run(args)
    plan(parent.model, config, QUANTIZERS.get(config.method)())  # every check, before any work
    data = parent.data(progress=not args.quiet)
    before = evaluate(parent.model, data)
    seed_everything(args.seed)
    say(args, f"quantizing {parent.path} with {config.method}")
    result = quantize(
        parent.model,
        config,
        data,
        progress=not args.quiet,
        on_epoch=epoch_printer(args, config.finetune_epochs),
    )
    after = evaluate(parent.model, data)
    summary = result.summary()
    cfg = parent.child_config(
        {
            "step": "quantize",
            "method": config.method,
            "bits_per_weight": summary["bits_per_weight"],
            "test_accuracy": after["accuracy"],
        }
    )
    cfg.setdefault("compression", {})["quantization"] = summary
    metrics = {
        "test_accuracy": after["accuracy"],
        "test_loss": after["loss"],
        "test_errors": after["errors"],
        "parent_test_accuracy": before["accuracy"],
        "storage": result.storage,
        "history": result.history,
    }
    runs.save(parent.model.cpu(), out, config=cfg, metrics=metrics, force=args.force)
    _print(args, out, before, after, result)
    return 0


def _print(args, out, before, after, result) -> None:
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
            table(rows, ["layer", "kind", "bits", "bits/weight", "index B", "codebook B", "ratio"]),
            f"\ntest accuracy {100 * before['accuracy']:.2f}% -> {100 * after['accuracy']:.2f}%; "
            f"model {storage['fp32_bytes']:,} -> {storage['model_bytes']:,} bytes "
            f"({storage['model_ratio']:.2f}x); wrote {out}",
        ]
    )
    payload = {
        "run": str(out),
        "method": result.config.method,
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "bits_per_weight": total["bits_per_weight"],
        "ratio": total["ratio"],
        "model_bytes": storage["model_bytes"],
        "model_ratio": storage["model_ratio"],
        "layers": storage["layers"],
        "finetune": result.history,
    }
    emit(args, payload, text)


def list_quantizers(args: argparse.Namespace) -> int:
    from ..quantization import QUANTIZERS

    items = []
    for name, description in QUANTIZERS.describe().items():
        q = QUANTIZERS.get(name)
        lo, hi = q.bits_range
        items.append(
            {
                "name": name,
                "bits": f"{lo}" if lo == hi else f"{lo}-{hi}",
                "default_bits": q.default_bits,
                "needs_data": q.needs_data,
                "layers": [t.__name__ for t in q.layer_types],
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
