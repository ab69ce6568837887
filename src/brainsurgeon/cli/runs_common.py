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
