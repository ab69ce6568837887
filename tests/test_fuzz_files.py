"""Fuzz run directories and compressed ``.bsc`` files: damage is refused, never loaded.

Run directories (a pruned + k-means-quantized tiny run) lose files, get a ``config.json``
that is not JSON or has fields of the wrong type, value or shape, a ``metrics.json`` that is
not JSON, or the ``model.safetensors`` of another model or a damaged one. ``.bsc`` files get
bit flips and truncations anywhere, extra bytes, or a tampered header re-packed with valid
checksums (shapes, dtypes, encodings, section names). The property: ``inspect`` /
``evaluate`` / ``export`` work or refuse in one line, and a file whose bytes changed never
loads silently as a different model.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis")
import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_support import (  # noqa: E402
    Tally,
    example_dir,
    fuzz_settings,
    judge,
    run_main,
    tiny_fixture,  # noqa: E402, F401 - the session fixture
)

TALLY = Tally("files")
JUNK = [
    None,
    True,
    0,
    -1,
    1,
    7,
    2**63,
    1e308,
    float("nan"),
    "",
    "x",
    "lenet300",
    [],
    [1],
    [0, 0],
    [1, 8, 8],
    [-1, 64],
    {},
    {"a": 1},
    [[1]],
]


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("fuzz-files")
    paths = dict(tiny)
    (root / "fixtures").mkdir()
    other = root / "fixtures" / "other"
    res = run_main(
        ["train", "--model", "mlp:64-12-10", "--epochs", "1", "--out", str(other), "--quiet"]
    )
    assert res.code == 0, res.stderr
    from brainsurgeon.container.format import unpack
    from brainsurgeon.runs import load_run

    bsc = paths["bsc"].read_bytes()
    paths.update(root=root, other=other, bsc_bytes=bsc, container=unpack(bsc))
    paths["reference"] = {
        k: v.clone() for k, v in load_run(paths["bsc"]).model.state_dict().items()
    }
    yield paths
    TALLY.write()


def _paths_in(obj, prefix=()):
    """Every (key path) of a JSON value, for picking a field to damage."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths_in(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            yield from _paths_in(v, (*prefix, i))


def _set(obj, path, value, delete=False):
    if not path:
        return value
    target = obj
    for key in path[:-1]:
        target = target[key]
    if delete and isinstance(target, dict):
        target.pop(path[-1], None)
    elif delete and isinstance(target, list):
        target.pop(path[-1])
    else:
        target[path[-1]] = value
    return obj


@st.composite
def json_damage(draw, doc):
    """``doc`` with 1-3 fields replaced by junk or deleted."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths_in(doc))
        path = draw(st.sampled_from(paths))
        delete = bool(path) and draw(st.integers(0, 3)) == 0
        junk = copy.deepcopy(draw(st.sampled_from(JUNK)))  # never the shared object
        doc = _set(doc, path, junk, delete=delete)
        if not isinstance(doc, dict | list):
            break
    return doc


@st.composite
def run_damage(draw):
    """A description of what to do to a copy of the run directory."""
    what = draw(
        st.sampled_from(
            [
                "config",
                "config",
                "config",
                "config-text",
                "metrics",
                "delete",
                "weights-other",
                "weights-bytes",
            ]
        )
    )
    return {
        "what": what,
        "file": draw(st.sampled_from(["config.json", "model.safetensors", "metrics.json"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "rehash": draw(st.booleans()),
        "command": draw(st.sampled_from(["inspect", "evaluate", "export", "evaluate"])),
        "text": draw(
            st.sampled_from(
                ["", "{", "[]", "null", "\xff\xfe", '{"format": 1}', "1e999", '"brainsurgeon-run"']
            )
        ),
    }


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _apply(d: dict, run: Path, made: dict, draw_json) -> None:
    cfg_path, weights = run / "config.json", run / "model.safetensors"
    if d["what"] == "config":
        cfg = json.loads(cfg_path.read_text())
        cfg_path.write_text(json.dumps(draw_json(cfg)))
    elif d["what"] == "config-text":
        cfg_path.write_text(d["text"], errors="surrogateescape")
    elif d["what"] == "metrics":
        (run / "metrics.json").write_text(d["text"], errors="surrogateescape")
    elif d["what"] == "delete":
        (run / d["file"]).unlink()
    elif d["what"] == "weights-other":
        shutil.copy(made["other"] / "model.safetensors", weights)
    else:
        data = bytearray(weights.read_bytes())
        rng = torch.Generator().manual_seed(d["seed"])
        i = int(torch.randint(len(data), (1,), generator=rng))
        if d["seed"] % 3 == 0:
            data = data[:i]
        else:
            data[i] ^= 1 << int(d["seed"] % 8)
        weights.write_bytes(bytes(data))
    if d["rehash"] and d["what"].startswith("weights") and cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())  # the user "fixes" the checksum by hand
        cfg["weights_sha256"] = _sha(weights)
        cfg_path.write_text(json.dumps(cfg))


counter = [0]


@fuzz_settings(default=30, share=0.4)
@given(d=run_damage(), data=st.data())
def test_damaged_run_directories_are_refused_in_one_line(d, data, made):
    with example_dir(made["root"] / "work", counter) as work:
        run = work / "run"
        shutil.copytree(made["pq"], run)
        _apply(d, run, made, lambda doc: data.draw(json_damage(doc)))
        argv = [d["command"], str(run), "--quiet"]
        out = work / "out.bsc"
        if d["command"] == "export":
            argv += ["--out", str(out)]
        verdict = judge(run_main(argv), quiet=True, work=work, outputs=(out,))
        if d["what"].startswith("weights") and not d["rehash"] and verdict[0] == "accepted":
            verdict = ("failure", "changed weights loaded although the checksum differs")
    TALLY.check(verdict, d)


@st.composite
def bsc_damage(draw, size: int):
    how = draw(st.sampled_from(["flip", "flip", "flips", "cut", "append", "zero"]))
    if how in ("flip", "flips"):
        bits = [
            (draw(st.integers(0, size - 1)), draw(st.integers(0, 7)))
            for _ in range(1 if how == "flip" else draw(st.integers(2, 8)))
        ]
        return {"how": "flip", "bits": bits}
    if how == "cut":
        return {"how": "cut", "at": draw(st.integers(0, size - 1))}
    if how == "zero":
        start = draw(st.integers(0, size - 1))
        return {"how": "zero", "start": start, "length": draw(st.integers(1, 64))}
    return {"how": "append", "bytes": draw(st.binary(min_size=1, max_size=40))}


def _damaged(data: bytes, d: dict) -> bytes:
    buf = bytearray(data)
    if d["how"] == "flip":
        for i, bit in d["bits"]:
            buf[i] ^= 1 << bit
    elif d["how"] == "cut":
        del buf[d["at"] :]
    elif d["how"] == "zero":
        buf[d["start"] : d["start"] + d["length"]] = bytes(
            len(buf[d["start"] : d["start"] + d["length"]])
        )
    else:
        buf += d["bytes"]
    return bytes(buf)


def check_bsc(data: bytes, made: dict, what, *, command: str, must_refuse: bool) -> None:
    from brainsurgeon.errors import BrainsurgeonError
    from brainsurgeon.runs import load_run

    with example_dir(made["root"] / "work", counter) as work:
        path = work / "model.bsc"
        path.write_bytes(data)
        verdict = judge(run_main([command, str(path), "--quiet"]), quiet=True, work=work)
        if verdict[0] == "accepted":
            try:  # the library path: the same bytes must give the same model, or an error
                model = load_run(path).model
                same = _same(model.state_dict(), made["reference"])
            except BrainsurgeonError:
                same = None
            if must_refuse:  # a re-packed header (valid checksums) may load as another model
                verdict = ("failure", f"damaged file loaded (same weights: {same})")
    TALLY.check(verdict, what)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


@fuzz_settings(default=40, share=0.4)
@given(data=st.data(), command=st.sampled_from(["inspect", "evaluate", "inspect"]))
def test_damaged_bsc_files_are_refused(data, command, made):
    original = made["bsc_bytes"]
    d = data.draw(bsc_damage(len(original)))
    damaged = _damaged(original, d)
    check_bsc(damaged, made, d, command=command, must_refuse=damaged != original)


@fuzz_settings(default=20, share=0.2)
@given(data=st.data(), command=st.sampled_from(["inspect", "evaluate"]))
def test_tampered_bsc_headers_are_refused_or_load(data, command, made):
    """Header fields changed and the file re-packed with valid CRCs and SHA-256 (a buggy
    writer or a deliberate edit): decode or refuse in one line, never a traceback or hang."""
    from brainsurgeon.container.format import pack

    c = made["container"]
    header = {k: v for k, v in c.header.items() if k != "sections"}
    header = data.draw(json_damage(header))
    sections = dict(c.sections)
    if data.draw(st.integers(0, 3)) == 0 and sections:  # damage a section and keep the CRCs
        name = data.draw(st.sampled_from(sorted(sections)))
        blob = sections[name]
        cut = data.draw(st.integers(0, len(blob)))
        sections[name] = blob[:cut] + data.draw(st.binary(max_size=8))
    if not isinstance(header, dict):
        header = {"junk": header}
    blob = pack(header, sections)
    check_bsc(blob, made, {"header": _brief(header)}, command=command, must_refuse=False)


def _brief(obj) -> str:
    text = json.dumps(obj, default=str)
    return text if len(text) < 1500 else text[:1500] + "..."


def test_the_intact_file_loads_and_matches(made, tmp_path):
    """The starting point is valid: the undamaged bytes load as the reference model."""
    from brainsurgeon.runs import load_run

    path = tmp_path / "model.bsc"
    path.write_bytes(made["bsc_bytes"])
    assert run_main(["inspect", str(path), "--quiet"]).code == 0
    assert _same(load_run(path).model.state_dict(), made["reference"])
