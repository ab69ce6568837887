"""Atomic file writes: temp file in the same folder, fsync, rename. Nothing half-written.

Under ``torch.distributed`` only rank 0 writes: on the other ranks every writer here works
in a throwaway temp folder that is deleted, so the same code runs everywhere and one copy
of each output lands on disk.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it over ``path``, else delete it."""
    path = Path(path)
    if path.is_dir():
        from .errors import RunDirError

        raise RunDirError(f"{path} is a directory; give a file name (nothing was written)")
    if not _writer():
        with tempfile.TemporaryDirectory(prefix="brainsurgeon-rank-") as scratch:
            yield Path(scratch) / path.name
        return
    _make_parent(path)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def sweep_stale(path: Path) -> None:
    """Remove the temp entries (``.NAME.*.tmp``) that a killed writer of ``path`` left.

    A process killed with SIGKILL runs no cleanup; its half-written temp file or folder
    stays beside ``path`` until the next write of the same ``path`` removes it here.
    """
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def recover(path: str | os.PathLike) -> None:
    """Clean up after a writer of ``path`` killed inside :func:`atomic_dir`.

    A kill between moving the old ``path`` aside (``.NAME.old``) and moving the new one in
    leaves no ``path``: the old one is put back. A kill after the new one is in place leaves
    ``.NAME.old`` beside it: it is removed. Stale temp entries go too (:func:`sweep_stale`).
    """
    path = Path(path).absolute()
    if not path.name:  # the file-system root: nothing a writer could have moved aside
        return
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        if not path.exists():
            os.replace(old, path)
        else:
            shutil.rmtree(old, ignore_errors=True)
    sweep_stale(path)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_default) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Build a directory under a temp name and move it into place only when complete.

    An existing ``path`` is refused unless ``force``; with ``force`` it is replaced only after
    the new one is complete, so a failure leaves the old results intact.
    """
    from .errors import RunDirError

    path = Path(path)
    if not _writer():  # another rank writes the real one
        with tempfile.TemporaryDirectory(prefix="brainsurgeon-rank-") as scratch:
            yield Path(scratch)
        return
    if path.parent.is_dir():
        recover(path)
    if path.exists() and not force:
        raise RunDirError(f"{path} already exists; choose another --out or pass --force")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a folder; choose another --out")
    if path.exists():
        check_replaceable(path)
    _make_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _writer() -> bool:
    """True unless this is a rank other than 0 of a ``torch.distributed`` run."""
    from .distributed.group import is_main

    return is_main()


def refuse_file_out(path: str | os.PathLike) -> None:
    """``--out`` must name a run directory: a file there is refused before any work (``--force``
    replaces folders only, never a user's file)."""
    from .errors import RunDirError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(
            f"{path} is a file, not a run directory (--force replaces folders only); "
            "choose another --out"
        )


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse to replace (``--force``) a folder that holds the current folder: ``--out .
    --force`` would otherwise delete everything in it."""
    from .errors import RunDirError

    target, cwd = Path(path).resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise RunDirError(
            f"--out {path} is (or holds) the current folder; --force would delete it; "
            "choose a new folder such as --out runs/x"
        )


def _make_parent(path: Path) -> None:
    """Create the folder ``path`` goes in; a one-line error if a file is in the way."""
    from .errors import RunDirError

    if not path.name or path.name in (".", ".."):
        raise RunDirError(f"{str(path)!r} names no file or folder; give a name (e.g. --out runs/x)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(
            f"cannot create {path.parent}: a file is in the way; choose another path"
        ) from None
    except PermissionError:
        raise RunDirError(f"cannot create {path.parent}: permission denied") from None


def _default(obj: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
