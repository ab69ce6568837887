"""Fuzz the text loaders: random bytes, encodings, line endings, JSON lines and CSV tables
with and without the named columns. ``read_texts`` must return sentences or refuse with one
DataError line; never another exception, an empty table, or a half-read file."""

from __future__ import annotations

import itertools
import json

import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from brainsurgeon.data import read_texts  # noqa: E402
from brainsurgeon.errors import BrainsurgeonError  # noqa: E402
from fuzz_support import Tally, fuzz_settings  # noqa: E402

TALLY = Tally("text")
COUNTER = itertools.count()
SUFFIXES = [".txt", ".jsonl", ".csv", ".tsv", ".json", ""]
WORDS = ["the", "cat", "sat", "é", "🙂", "\t", ",", '"', "\\", "\x00", " ", "text", "label"]

sentence = st.lists(st.sampled_from(WORDS), min_size=0, max_size=6).map(" ".join)
value = st.one_of(sentence, st.integers(-5, 5), st.floats(allow_nan=True), st.none(), st.booleans())
row = st.dictionaries(st.sampled_from(["text", "label", "score", "sentence1", "x"]), value)


def _jsonl(rows, broken: bool) -> bytes:
    lines = [json.dumps(r) for r in rows]
    if broken and lines:
        lines[len(lines) // 2] = lines[len(lines) // 2][:-1]
    return "\n".join(lines).encode()


def _csv(rows, sep: str) -> bytes:
    header = sorted({k for r in rows for k in r}) or ["text"]
    out = [sep.join(header)] + [sep.join(str(r.get(k, "")) for k in header) for r in rows]
    return "\n".join(out).encode()


content = st.one_of(
    st.binary(max_size=300),
    st.lists(sentence, max_size=20).map(lambda s: "\n".join(s).encode()),
    st.tuples(st.lists(row, max_size=8), st.booleans()).map(lambda a: _jsonl(*a)),
    st.tuples(st.lists(row, max_size=8), st.sampled_from([",", "\t", ";"])).map(lambda a: _csv(*a)),
    st.lists(sentence, max_size=10).map(lambda s: "\r\n".join(s).encode("utf-16")),
)
options = st.fixed_dictionaries(
    {},
    optional={
        "column": st.sampled_from(["text", "sentence1", "missing", ""]),
        "label_column": st.sampled_from(["label", "missing"]),
        "score_column": st.sampled_from(["score", "label"]),
    },
)


@fuzz_settings(60)
@given(data=content, suffix=st.sampled_from(SUFFIXES), opts=options)
def test_text_files_load_or_refuse_in_one_line(tmp_path_factory, data, suffix, opts):
    path = tmp_path_factory.getbasetemp() / f"t{next(COUNTER)}{suffix}"
    path.write_bytes(data)
    try:
        table = read_texts(path, **opts)
    except BrainsurgeonError as err:
        text = str(err)
        ok = bool(text.strip()) and len(" ".join(text.split())) < 1000
        TALLY.check(("refused", text) if ok else ("failure", f"bad message {text!r}"), opts)
        return
    except Exception as err:  # noqa: BLE001 - the property: nothing but a clean refusal
        TALLY.check(("failure", f"{type(err).__name__}: {err}"), (data[:80], suffix, opts))
        return
    good = len(table.texts) > 0 and all(isinstance(t, str) and t.strip() for t in table.texts)
    TALLY.check(("accepted", "") if good else ("failure", "empty or blank texts"), opts)


def teardown_module(module) -> None:
    TALLY.write()
