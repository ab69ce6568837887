"""CLI helpers shared by commands that read or write run directories."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..runs import Run, load_run
from ..utils import resolve_device


def open_run(args: argparse.Namespace, path: str | None = None) -> Run:
    """Load ``args.run`` (or ``path``) on ``args.device``."""
    device = resolve_device(getattr(args, "device", "auto"))
    return load_run(path or args.run, device=device)


def check_out(path: str | Path, force: bool) -> Path:
    """Refuse an existing output directory unless ``--force`` (checked before any work)."""
    path = Path(path)
    if path.exists() and not force:
        raise RunDirError(f"{path} already exists; choose another --out or pass --force")
    return path


def epoch_printer(args: argparse.Namespace, total: int):
    """A ``callback`` for ``fit`` printing one line per epoch to stderr."""
    from .common import say

    def show(record: dict[str, Any]) -> None:
        val = record.get("val_accuracy")
        val_text = f"  val acc {100 * val:.2f}%" if val is not None else ""
        say(
            args,
            f"epoch {record['epoch']:>3}/{total}  loss {record['train_loss']:.4f}{val_text}"
            f"  lr {record['lr']:.4g}  ({record['seconds']:.1f} s)",
        )

    return show


CHECKPOINTS_DIR = "epochs"
COMMAND_FILE = "command.json"
NOT_OPTIONS = ("func", "resume", "force", "quiet", "json", "device")
#: options that may change on --resume: the fixes a diverged (NaN) run needs
FIXES = ("lr", "finetune_lr", "hint_lr", "damp")


def resumable_out(args: argparse.Namespace) -> tuple[Path, dict[str, Any]] | None:
    """Check ``args.out`` for a command with epoch checkpoints (``OUT/epochs/``).

    Returns ``(checkpoint folder, meta)`` for :func:`epoch_checkpoints`, or None when
    ``--resume`` finds the run finished. An unfinished ``OUT`` is continued with ``--resume``
    (same options, except a smaller learning rate or more damping after a NaN) or discarded
    with ``--force``; anything else in the way is refused before any work.
    """
    import json
    import shutil

    from .._io import recover, refuse_file_out
    from ..runs import CONFIG_FILE

    out, resume, force = Path(args.out), args.resume, args.force
    if out.parent.is_dir():
        recover(out)  # a run killed while writing its final folder
    refuse_file_out(out)
    root = out / CHECKPOINTS_DIR
    options = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_OPTIONS}
    options = json.loads(json.dumps(options, default=str))
    meta = (root / COMMAND_FILE, {"options": options})
    if (out / CONFIG_FILE).exists() and resume:
        return None
    if (root / COMMAND_FILE).exists() and resume:
        saved = json.loads((root / COMMAND_FILE).read_text()).get("options", {})
        diff = sorted(k for k in set(saved) | set(options) if saved.get(k) != options.get(k))
        if [k for k in diff if k not in FIXES]:
            raise RunDirError(
                f"{out} holds an unfinished run with other options ({', '.join(diff)}); "
                "resume with the same options, or pass --force to start over"
            )
        return root, meta
    nothing_kept = out.is_dir() and all(
        p.name == CHECKPOINTS_DIR or p.name.startswith(".") for p in out.iterdir()
    )  # killed before its first checkpoint: --resume starts it afresh
    if out.exists() and not force and not (resume and nothing_kept):
        held = " and holds an unfinished run (pass --resume to continue it)" * root.is_dir()
        raise RunDirError(f"{out} already exists{held}; choose another --out or pass --force")
    if root.is_dir():
        shutil.rmtree(root)
    return root, meta


def add_resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted --out after its last finished epoch (same options)",
    )
