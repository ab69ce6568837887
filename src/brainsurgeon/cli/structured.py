"""``brainsurgeon shrink`` and ``brainsurgeon merge``: make a model physically smaller.

``shrink`` cuts every dead unit out of a run: a neuron, conv filter or attention head whose
weights, bias and norm affine are all zero (structured pruning with ``--granularity``, group
lasso) disappears from its layer and from every layer that reads it (the next layer's
columns, BatchNorm channels, both branches of a residual addition). The result is a smaller
dense model with the same outputs, which ``brainsurgeon.load`` rebuilds.

``merge`` removes a fraction of each hidden Linear layer's neurons and folds them into the
ones that stay instead of dropping them: Kim et al. (NeurIPS 2020; a removed unit that is
nearly a positive multiple ``z`` of a kept one adds ``z`` times its outgoing weights to it)
or Srinivas & Babu's data-free merge (2015; the most similar pair, outgoing weights summed).
No data needed; fine-tune afterwards if you like.
"""

from __future__ import annotations

import argparse

from .common import add_command, add_common, emit, say, table
from .runs_common import check_out, open_run

SHRINK_EPILOG = """\
examples:
  brainsurgeon prune runs/lenet --granularity neuron --criterion l2 --amount 0.5 \\
      --finetune-epochs 2 --out runs/lenet-n50 --shrink        # prune + shrink in one go
  brainsurgeon shrink runs/lenet-n50 --out runs/lenet-n50-small
  brainsurgeon inspect runs/lenet-n50-small                    # the new widths"""

DROP_EPILOG = """\
examples:
  brainsurgeon drop runs/resnet8 --blocks 1 --out runs/resnet8-d1
  brainsurgeon drop runs/encoder --blocks 2 --finetune-epochs 2 --out runs/encoder-d2"""

MERGE_EPILOG = """\
examples:
  brainsurgeon merge runs/lenet --amount 0.5 --out runs/lenet-merged
  brainsurgeon merge runs/lenet --amount 0.7 --method data-free --out runs/lenet-df70
  brainsurgeon merge runs/lenet --amount 0.5 --threshold 0.2 --out runs/lenet-m50"""


def register(sub: argparse._SubParsersAction) -> None:
    summary = "cut dead neurons/channels/heads out of a run: a smaller dense model"
    p = add_command(sub, "shrink", summary, __doc__, SHRINK_EPILOG)
    p.add_argument("run", help="run directory (structured masks or dead units)")
    p.add_argument("--out", required=True, help="output run directory")
    p.add_argument("--tol", type=float, default=0.0, help="|w| <= tol counts as zero")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    add_common(p, seed=False)
    p.set_defaults(func=run_shrink)
    d = add_command(sub, "drop", "remove whole residual blocks or transformer layers",
                    __doc__, DROP_EPILOG)  # fmt: skip
    d.add_argument("run", help="run directory")
    d.add_argument("--out", required=True, help="output run directory")
    d.add_argument("--blocks", type=int, required=True, help="how many blocks to remove")
    d.add_argument("--samples", type=int, default=1000, help="calibration samples")
    d.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune afterwards")
    d.add_argument("--force", action="store_true", help="overwrite --out")
    add_common(d)
    d.set_defaults(func=run_drop)
    m = add_command(sub, "merge", "remove hidden neurons by merging them into others", __doc__,
                    MERGE_EPILOG)  # fmt: skip
    m.add_argument("run", help="run directory of an MLP (Linear -> ReLU -> Linear)")
    m.add_argument("--out", required=True, help="output run directory")
    m.add_argument("--amount", type=float, required=True, help="fraction of units removed")
    m.add_argument("--method", default="kim", choices=["kim", "data-free"])
    m.add_argument(
        "--threshold",
        type=float,
        default=0.45,
        help="kim: cosine similarity above which a removed unit is merged (default 0.45)",
    )
    m.add_argument("--force", action="store_true", help="overwrite --out")
    add_common(m, seed=False)
    m.set_defaults(func=run_merge)


def width_rows(units: dict[str, list[int]]) -> list[list]:
    return [
        [name, before, kept, f"{100 * (1 - kept / before):.1f}%"]
        for name, (kept, before) in units.items()
    ]


def run_shrink(args: argparse.Namespace) -> int:
    from ..pipeline import save_child
    from ..structured.api import shrink_model

    out = check_out(args.out, args.force)
    source = open_run(args)
    say(args, f"shrinking {source.path} -> {out}")
    result = shrink_model(source.model, tol=args.tol)
    data = source.data() if source.config.get("data") else None
    step = {"step": "shrink", "units": result.units, "params": result.params_after}
    save_child(source.model, source, out, step=step, data=data, force=args.force)
    payload = {"run": str(out), "parent": str(source.path), **result.to_dict()}
    text = table(width_rows(result.units), ["group", "units before", "after", "removed"])
    text += (
        f"\nparameters {result.params_before:,} -> {result.params_after:,} "
        f"({result.params_before / max(result.params_after, 1):.2f}x fewer); wrote {out}"
    )
    if not result.units:
        text += "\nnothing was dead: prune with --granularity neuron|channel|head first"
    text += "".join(f"\nnote: {n}" for n in result.notes)
    emit(args, payload, text)
    return 0


def run_drop(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, check_positive_int
    from ..pipeline import FinetuneConfig, finetune, save_child
    from ..structured import block_damage, drop_blocks

    check_positive_int("--blocks", args.blocks)
    out = check_out(args.out, args.force)
    source = open_run(args)
    data = source.data()
    damage = block_damage(source.model, data, samples=args.samples, seed=args.seed)
    if args.blocks >= len(damage):
        raise ConfigError(
            f"--blocks {args.blocks}: the model has {len(damage)} removable blocks "
            f"({', '.join(damage) or 'none'}); remove fewer"
        )
    chosen = sorted(damage, key=damage.get)[: args.blocks]
    before = sum(p.numel() for p in source.model.parameters())
    drop_blocks(source.model, chosen)
    tune = FinetuneConfig(epochs=args.finetune_epochs, seed=args.seed)
    finetune(source.model, data, tune, device=args.device, progress=not args.quiet)
    step = {"step": "drop", "blocks": chosen, "damage": {b: damage[b] for b in chosen}}
    save_child(source.model, source, out, step=step, data=data, force=args.force)
    after = sum(p.numel() for p in source.model.parameters())
    rows = [[b, round(d, 5), "dropped" if b in chosen else "kept"] for b, d in damage.items()]
    text = table(rows, ["block", "measured damage", ""])
    text += f"\nparameters {before:,} -> {after:,}; wrote {out}"
    emit(args, {"run": str(out), "damage": damage, "dropped": chosen}, text)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..errors import check_fraction
    from ..pipeline import save_child
    from ..state import make_permanent, record_edit
    from ..structured import merge

    check_fraction("--amount", args.amount)
    out = check_out(args.out, args.force)
    source = open_run(args)
    before = sum(p.numel() for p in source.model.parameters())
    widths = {
        n: m.out_features for n, m in source.model.named_modules() if hasattr(m, "out_features")
    }
    model = make_permanent(source.model)
    result = merge(model, args.amount, method=args.method, threshold=args.threshold,
                   inplace=True)  # fmt: skip
    shapes = [[n.rpartition(".")[0], n.rpartition(".")[2], list(p.shape)]
              for n, p in result.model.named_parameters()]  # fmt: skip
    record_edit(result.model, {"kind": "shrink", "attention": [], "tensors": shapes})
    units = {name: [int(k.numel()), widths[name]] for name, k in result.kept.items()}
    step = {"step": "merge", "method": args.method, "amount": args.amount, "units": units}
    save_child(result.model, source, out, step=step, data=source.data(), force=args.force)
    after = sum(p.numel() for p in result.model.parameters())
    payload = {"run": str(out), "parent": str(source.path), "units": units, "merged": result.merged}
    text = table(width_rows(units), ["layer", "units before", "after", "removed"])
    text += f"\nparameters {before:,} -> {after:,}; {result.merged} units merged; wrote {out}"
    emit(args, payload, text)
    return 0
