"""Text data: read_texts formats and errors, seeded disjoint splits, cached tokenisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainsurgeon.data import (
    CORPORA,
    TextTable,
    read_texts,
    split_texts,
    tokenize,
)
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
