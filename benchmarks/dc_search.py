"""Deep Compression recipe search: LeNet-300-100 / LeNet-5 on MNIST, prune -> k-means -> size.

Han, Mao & Dally 2016 targets: LeNet-300-100 92% pruned at 1.59% test error, 40x;
LeNet-5 (8% kept) at 0.77% test error, 39x.

    PYTHONPATH=src:benchmarks python benchmarks/dc_search.py dense  --model lenet300 --tag d30 ...
    PYTHONPATH=src:benchmarks python benchmarks/dc_search.py prune  --dense d30 --tag p1 ...
    PYTHONPATH=src:benchmarks python benchmarks/dc_search.py quant  --pruned p1 --bits 5 ...

Every step appends one row (under a file lock) to benchmarks/results/dc_search.json; models go
to runs/dcres/<tag> (``brainsurgeon.save`` run directories, masks and codebooks included).

Pruning rounds are driven here (not by ``PruneConfig(schedule="iterative")``) so that the
fine-tuning can use options ``PruneConfig`` does not expose (weight decay, a cosine schedule,
momentum, lr_step): each round calls ``brainsurgeon.prune`` one-shot to the round's cumulative
sparsity on the already-masked model (masks only shrink), then ``brainsurgeon.fit``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch

import brainsurgeon as bs
from brainsurgeon.pruning.iterative import _adjusted_dropout
from brainsurgeon.pruning.masks import find_mask
from brainsurgeon.pruning.schedules import iterative as geometric_sparsity
from brainsurgeon.quantization.methods.kmeans import KMeansQuant
from brainsurgeon.state import parametrizations_of

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "dc_search.json"
RUNS = ROOT.parent / "runs" / "dcres"
DENSE_BYTES = {"lenet300": 1_066_440, "lenet5": 1_724_320}


# --------------------------------------------------------------------------- logging
def append_row(kind: str, row: dict) -> None:
    """Append ``row`` to ``RESULTS[kind]`` under an exclusive lock (several processes write)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    lock = RESULTS.with_suffix(".lock")
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        doc.setdefault(kind, []).append(row)
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(RESULTS)
        fcntl.flock(fh, fcntl.LOCK_UN)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def accs(model, data) -> dict:
    test = bs.evaluate(model, data, split="test")["accuracy"]
    val = bs.evaluate(model, data, split="val")["accuracy"]
    return {"test_acc": test, "test_err_pct": round(100 * (1 - test), 2), "val_acc": val}


# --------------------------------------------------------------------------- size estimate
def entropy_bits(symbols) -> float:
    """Order-0 entropy code length of a symbol stream: sum_s -count_s log2(count_s / n)."""
    counts = Counter(symbols)
    n = sum(counts.values())
    return float(sum(-c * math.log2(c / n) for c in counts.values()))


def relative_indices(keep: torch.Tensor, field_bits: int) -> tuple[list[int], list[int]]:
    """Deep Compression CSR relative positions of the kept entries (row-major flattening).

    Each entry stores ``gap - 1`` (gap = position minus the previous entry's position, the
    first relative to -1) in a ``field_bits`` field, so gaps 1..2^b fit; a longer gap emits
    filler entries of gap 2^b (weight: the zero symbol) until the rest fits. Returns the
    stored field values and, per entry, -1 for a filler or the flat position of a weight.
    """
    span = 1 << field_bits
    pos = torch.nonzero(keep.flatten()).flatten().tolist()
    fields, owner, prev = [], [], -1
    for p in pos:
        gap = p - prev
        while gap > span:
            fields.append(span - 1)
            owner.append(-1)
            gap -= span
        fields.append(gap - 1)
        owner.append(p)
        prev = p
    return fields, owner


def layer_streams(module) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(keep, codes or None, k)`` of a module's weight: its mask and k-means indices."""
    keep, codes, k = None, None, 0
    for p in parametrizations_of(module, "weight"):
        if isinstance(p, KMeansQuant):
            k = p.codebook.numel()
            codes = p.indices.long()
            keep = codes < k if keep is None else keep & (codes < k)
    mask = find_mask(module, "weight")
    if mask is not None:
        keep = mask.mask.clone() if keep is None else keep & mask.mask
    if keep is None:
        keep = torch.ones_like(module.weight, dtype=torch.bool)
    return keep, codes, k


def compressed_size(model, *, fc_field_bits: int = 5, conv_field_bits: int = 8) -> dict:
    """Both layouts: CSR (row-major over ``(out, in...)``) and CSC (column-major: the weight
    matrix viewed as ``(out, fan_in)`` transposed); ``bytes`` is the smaller of the two per layer
    (one layout bit per layer, neglected)."""
    row = _compressed_size(model, fc_field_bits, conv_field_bits, False)
    col = _compressed_size(model, fc_field_bits, conv_field_bits, True)
    best = [
        {**r, "layout": "csr"} if r["bytes"] <= c["bytes"] else {**c, "layout": "csc"}
        for r, c in zip(row["layers"], col["layers"], strict=True)
    ]
    extra = row["bytes_total"] - sum(r["bytes"] for r in row["layers"])
    return {
        "bytes": round(extra + sum(b["bytes"] for b in best)),
        "bytes_csr": round(row["bytes_total"]),
        "bytes_csc": round(col["bytes_total"]),
        "bytes_fixed_width_csr": row["bytes_fixed_width"],
        "other_float_params": row["other_float_params"],
        "layers": best,
    }


def _compressed_size(model, fc_field_bits: int, conv_field_bits: int, csc: bool) -> dict:
    """Deep-Compression size estimate (bytes) of a pruned (+ k-means) model.

    Per Linear/Conv layer: the relative-index stream (``fc_field_bits`` for fc, ``conv_...``
    for conv, filler entries on overflow) and the k-means index stream (the filler entries take
    an extra "zero" symbol), each coded at its order-0 entropy; 4 bytes per codebook entry and
    per bias or other float parameter. A layer without a codebook stores 32-bit floats for its
    nonzeros. Also reports the fixed-width size (field_bits + bits per entry).
    """
    layers, total_bits, fixed_bits, covered = [], 0.0, 0.0, set()
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        conv = isinstance(module, torch.nn.Conv2d)
        fb = conv_field_bits if conv else fc_field_bits
        keep, codes, k = layer_streams(module)
        if csc:
            keep = keep.reshape(keep.shape[0], -1).t().contiguous()
            codes = None if codes is None else codes.reshape(codes.shape[0], -1).t().contiguous()
        fields, owner = relative_indices(keep, fb)
        idx_bits = entropy_bits(fields)
        if codes is not None:
            flat = codes.flatten().tolist()
            syms = [flat[o] if o >= 0 else k for o in owner]  # k: the filler's zero symbol
            w_bits = entropy_bits(syms)
            book_bits = 32 * k
            w_fixed = len(owner) * math.ceil(math.log2(k + 1)) if k else 0
        else:
            w_bits = w_fixed = 32.0 * len(owner)
            book_bits = 0
        bias_bits = 32 * (module.bias.numel() if module.bias is not None else 0)
        n = int(keep.sum())
        layers.append(
            {
                "layer": name,
                "weights": keep.numel(),
                "nonzeros": n,
                "kept": round(n / keep.numel(), 4),
                "entries": len(owner),
                "fillers": len(owner) - n,
                "k": k,
                "index_bits_per_entry": round(idx_bits / max(len(owner), 1), 3),
                "code_bits_per_entry": round(w_bits / max(len(owner), 1), 3),
                "bytes": round((idx_bits + w_bits + book_bits + bias_bits) / 8, 1),
            }
        )
        total_bits += idx_bits + w_bits + book_bits + bias_bits
        fixed_bits += len(owner) * fb + w_fixed + book_bits + bias_bits
        covered.add(id(module.bias))
        for p in parametrizations_of(module, "weight"):
            covered.update(id(t) for t in p.parameters())
        if hasattr(module, "parametrizations"):
            covered.add(id(module.parametrizations.weight.original))
        else:
            covered.add(id(module.weight))
    other = sum(p.numel() for p in model.parameters() if id(p) not in covered)
    total_bits += 32 * other
    fixed_bits += 32 * other
    return {
        "bytes_total": total_bits / 8,
        "bytes_fixed_width": round(fixed_bits / 8),
        "other_float_params": other,
        "layers": layers,
    }


def ratio(model_name: str, size: dict) -> dict:
    dense = DENSE_BYTES[model_name]
    return {
        "dense_bytes": dense,
        "compressed_bytes": size["bytes"],
        "ratio": round(dense / size["bytes"], 1),
        "ratio_csr": round(dense / size["bytes_csr"], 1),
        "ratio_fixed_width_csr": round(dense / size["bytes_fixed_width_csr"], 1),
    }


# --------------------------------------------------------------------------- steps
def train_config(args, prefix: str = "") -> bs.TrainConfig:
    g = lambda n: getattr(args, prefix + n)  # noqa: E731
    return bs.TrainConfig(
        epochs=g("epochs"),
        lr=g("lr"),
        schedule=g("schedule"),
        weight_decay=g("wd"),
        l2=g("l2"),
        lr_step=g("lr_step"),
        lr_gamma=g("lr_gamma"),
        momentum=0.9,
        batch_size=g("batch"),
        seed=args.seed,
    )


def cmd_dense(args, data) -> None:
    torch.manual_seed(args.seed)
    model = bs.build_model(
        args.model,
        data.input_shape,
        data.num_classes,
        {"dropout": args.dropout} if args.dropout else None,
    )
    cfg = train_config(args)
    t0 = time.perf_counter()
    hist = bs.fit(model, data, cfg, progress=False, callback=lambda r: log(f"{args.tag} {r}"))
    secs = time.perf_counter() - t0
    bs.save(
        model,
        RUNS / args.tag,
        config={"data": data.spec, "history": [{"step": "train"}]},
        force=True,
    )
    row = {
        "tag": args.tag,
        "model": args.model,
        "dropout": args.dropout,
        "train": cfg.to_dict(),
        **accs(model, data),
        "val_curve": [h.get("val_accuracy") for h in hist],
        "seconds": round(secs, 1),
    }
    log(json.dumps({k: row[k] for k in ("tag", "test_acc", "val_acc", "seconds")}))
    append_row("dense", row)


def layer_amounts(spec: str | None) -> dict | None:
    if not spec:
        return None
    return {k: float(v) for k, v in (kv.split("=") for kv in spec.split(","))}


def cmd_prune(args, data) -> None:
    run = bs.load_run(RUNS / args.dense)
    model, model_name = run.model, args.model
    cfg = train_config(args, "ft_")
    final_layers = layer_amounts(args.layer_sparsity)
    rounds, t0 = [], time.perf_counter()
    for r in range(1, args.rounds + 1):
        s = geometric_sparsity(r, args.amount, args.rounds, args.spacing)
        if final_layers:  # per-layer targets, each geometric in its own final kept fraction
            layers = {
                k: geometric_sparsity(r, v, args.rounds, args.spacing)
                for k, v in final_layers.items()
            }
            pc = bs.PruneConfig(
                criterion=args.criterion,
                amount=s,
                scheme="per-layer",
                layer_sparsity=layers,
                samples=args.samples,
                seed=args.seed + r,
            )
        else:
            pc = bs.PruneConfig(
                criterion=args.criterion, amount=s, samples=args.samples, seed=args.seed + r
            )
        res = bs.prune(model, pc, data, device="cpu", progress=False)
        before = bs.evaluate(model, data, split="test")["accuracy"]
        epochs = (
            args.ft_epochs_last if (r == args.rounds and args.ft_epochs_last) else args.ft_epochs
        )
        last = r == args.rounds
        lr = args.ft_lr_last if (last and args.ft_lr_last) else cfg.lr
        rcfg = dataclasses.replace(cfg, epochs=epochs, lr=lr, seed=args.seed + r)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed + r)
            with _adjusted_dropout(model, args.adjust_dropout):
                bs.fit(model, data, rcfg, progress=False)
        rec = {
            "round": r,
            "sparsity": round(res.total_sparsity, 4),
            "acc_pruned": before,
            **accs(model, data),
            "t": round(time.perf_counter() - t0, 1),
        }
        log(f"{args.tag} {rec}")
        rounds.append(rec)
    secs = time.perf_counter() - t0
    bs.save(
        model,
        RUNS / args.tag,
        config={"data": data.spec, "history": [{"step": "prune"}]},
        force=True,
    )
    size = compressed_size(model)
    row = {
        "tag": args.tag,
        "model": model_name,
        "dense": args.dense,
        "criterion": args.criterion,
        "amount": args.amount,
        "layer_sparsity": final_layers,
        "rounds": args.rounds,
        "spacing": args.spacing,
        "finetune": cfg.to_dict(),
        "finetune_epochs_last": args.ft_epochs_last,
        "finetune_lr_last": args.ft_lr_last,
        "adjust_dropout": args.adjust_dropout,
        **accs(model, data),
        "per_round": rounds,
        "layer_kept": {l["layer"]: l["kept"] for l in size["layers"]},
        "seconds": round(secs, 1),
    }
    log(json.dumps({k: row[k] for k in ("tag", "test_acc", "val_acc", "seconds")}))
    append_row("prune", row)


def cmd_quant(args, data) -> None:
    run = bs.load_run(RUNS / args.pruned)
    model = run.model
    per_layer = layer_amounts(args.per_layer_bits) or {}
    per_layer = {k: int(v) for k, v in per_layer.items()}
    qc = bs.quant_config(
        "kmeans",
        bits=args.bits,
        per_layer_bits=per_layer,
        init=args.init,
        finetune_epochs=0,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    bs.quantize(model, qc, data, progress=False)
    before = accs(model, data)
    hist = []
    if args.q_epochs:  # centroid fine-tuning (quantize's own uses cosine SGD at finetune_lr)
        tc = bs.TrainConfig(
            epochs=args.q_epochs,
            lr=args.q_lr,
            schedule=args.q_schedule,
            momentum=0.9,
            seed=args.seed,
        )
        hist = bs.fit(model, data, tc, progress=False)
    secs = time.perf_counter() - t0
    size = compressed_size(model)
    after = accs(model, data)
    tag = args.tag or f"{args.pruned}-q{args.bits}{'-' + args.per_layer_bits if per_layer else ''}"
    bs.save(
        model, RUNS / tag, config={"data": data.spec, "history": [{"step": "quantize"}]}, force=True
    )
    row = {
        "tag": tag,
        "model": args.model,
        "pruned": args.pruned,
        "bits": args.bits,
        "per_layer_bits": per_layer,
        "init": args.init,
        "centroid_finetune": {
            "epochs": args.q_epochs,
            "lr": args.q_lr,
            "schedule": args.q_schedule,
            "momentum": 0.9,
        },
        "before_finetune": before,
        **after,
        "val_curve": [h.get("val_accuracy") for h in hist],
        **ratio(args.model, size),
        "size": size,
        "seconds": round(secs, 1),
    }
    log(
        json.dumps({k: row[k] for k in ("tag", "test_acc", "val_acc", "ratio", "compressed_bytes")})
    )
    append_row("quant", row)


def cmd_table(args, data=None) -> None:
    """Print the results as a compact markdown table."""
    doc = json.loads(RESULTS.read_text())
    print(
        "| step | tag | sparsity | test err % (before centroid FT) | val acc | ratio | bytes | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("dense", "prune", "quant"):
        for r in doc.get(kind, []):
            sp = r.get("amount", "")
            before = r.get("before_finetune", {}).get("test_err_pct")
            err = f"{r['test_err_pct']}" + (f" ({before})" if before is not None else "")
            print(
                f"| {kind} | {r['tag']} | {sp} | {err} | {r['val_acc']:.4f} | "
                f"{r.get('ratio', '')} | {r.get('compressed_bytes', '')} | {r['seconds']} |"
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["dense", "prune", "quant", "table"])
    p.add_argument("--model", default="lenet300")
    p.add_argument("--tag", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    for pre, ep, lr, sch in (("", 20, 0.05, "cosine"), ("ft_", 8, 0.01, "step")):
        p.add_argument(f"--{pre}epochs", type=int, default=ep)
        p.add_argument(f"--{pre}lr", type=float, default=lr)
        p.add_argument(f"--{pre}schedule", default=sch)
        p.add_argument(f"--{pre}wd", type=float, default=0.0)
        p.add_argument(f"--{pre}l2", type=float, default=0.0)
        p.add_argument(f"--{pre}lr_step", type=int, default=2)
        p.add_argument(f"--{pre}lr_gamma", type=float, default=0.5)
        p.add_argument(f"--{pre}batch", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--dense", default="")
    p.add_argument("--criterion", default="magnitude")
    p.add_argument("--amount", type=float, default=0.92)
    p.add_argument("--layer_sparsity", default=None, help="fc1=0.92,fc2=0.91 (per-layer scheme)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--spacing", default="geometric")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--ft_epochs_last", type=int, default=0, help="epochs of the last round")
    p.add_argument("--ft_lr_last", type=float, default=0.0, help="lr of the last round")
    p.add_argument("--adjust_dropout", type=int, default=1)
    p.add_argument("--pruned", default="")
    p.add_argument("--bits", type=int, default=5)
    p.add_argument("--per_layer_bits", default=None, help="conv=8,fc=5")
    p.add_argument("--init", default="linear")
    p.add_argument("--q_epochs", type=int, default=3)
    p.add_argument("--q_lr", type=float, default=1e-3)
    p.add_argument("--q_schedule", default="cosine")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.step == "table":
        cmd_table(args)
        return 0
    data = bs.data.load_data("mnist", progress=False)
    {"dense": cmd_dense, "prune": cmd_prune, "quant": cmd_quant}[args.step](args, data)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
