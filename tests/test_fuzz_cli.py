"""Fuzz every ``brainsurgeon`` command's options: each input works or is one clean refusal.

Each example starts from a cheap valid command line (a tiny run on digits, 1 epoch, a few
samples) and applies 1-4 random mutations: an option set to a value out of range, of the
wrong type, an unknown name, an empty string, a path that does not exist or is a file where a
folder is expected (or the reverse); a required option dropped; a flag added; a positional
replaced; a stray token appended. Options that scale the work (epochs, rounds, samples, ...)
only take small or invalid values, so accepted inputs stay fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import run_cli  # noqa: E402
from fuzz_support import (  # noqa: E402
    Tally,
    example_dir,
    fuzz_settings,
    judge,
    printable,
    run_main,
    tiny_fixture,  # noqa: F401 - the session fixture
)

TALLY = Tally("cli")

# A cheap valid command line per command; {run} etc. are filled from the fixtures.
BASE: dict[str, list[str]] = {
    cmd: line.split()
    for cmd, line in {
        "demo": "--out {out} --device tpu",  # never valid here (the demo takes a minute)
        "train": "--model mlp:64-8-10 --epochs 1 --out {out}",
        "evaluate": "{run}",
        "inspect": "{run}",
        "data": "check digits",
        "prune": "{run} --out {out} --samples 32",
        "criteria": "",
        "saliency-check": "{run} --weights 8 --samples 32 --criteria magnitude",
        "quantize": "{run} --bits 2 --out {out}",
        "quantizers": "",
        "distill": "--teacher {run} --student mlp:64-4-10 --epochs 1 --hint-epochs 0 --out {out}",
        "factorize": "{run} --rank 2 --out {out} --eval-samples 64",
        "shrink": "{pq} --out {out}",
        "drop": "{run} --out {out} --blocks 1 --samples 32",  # an MLP has no blocks: refused
        "merge": "{run} --out {out} --amount 0.5",
        "compare": "{run} --criteria magnitude --sparsities 0.5 --samples 32 --rounds 1 "
        "--out {out}",
        "study": "obd-sd {run} --criteria magnitude --rounds 1 --finetune-epochs 0 --samples 32 "
        "--sampled-weights 1 --out {out}",
        "sensitivity": "{run} --sparsities 0.5 --samples 32 --out {out}",
        "report": "{run} --out {out}.html --no-latency",
        "export": "{pq} --out {out}.bsc",
        "run": "{recipe} --check",
    }.items()
}
# Options that scale the work: only small or invalid values.
COST = set(
    "epochs finetune_epochs final_finetune_epochs hint_epochs rounds samples seeds max_iter "
    "obs_steps eval_samples sampled_weights weights stages block_width batch_size "
    "finetune_batch_size sparsities criteria val_size".split()
)
# (command, option) never dropped: the default --out of these writes beside the fixture run.
KEEP = {
    ("demo", "--device"),
    *((c, "--out") for c in ("compare", "study", "sensitivity", "report", "train", "demo")),
}
COST_POOL = ["-1", "0", "1", "2", "x", "", "1.5"]
INTS = ["", *"-3 -1 0 1 2 3 7 99999999999999999999 1.5 x 1e3".split()]
FLOATS = ["", *"-1 0 1e-12 0.5 0.9 1 1.5 2 1e308 1e999 nan inf -inf x 0x10".split()]
STRINGS = ["", " ", "x" * 300, *"x bogus 0 -1 nan null [1,2] {} a=b = , é fc1 *".split()]
NAMES = {
    key: line.split()
    for key, line in {
        "model": "mlp:64-8-10 mlp: mlp:0 mlp:64--10 mlp:-5 resnet lenet5 mlp:64-8-10:relu "
        "json:{} no_such_pkg.models:build",
        "criterion": "magnitude obd obd-sd obs layerwise-obs random taylor1 true-damage obx "
        "MAGNITUDE",
        "method": "kmeans uniform gptq binary ternary product residual kim data-free bogus",
        "loss": "cross_entropy mse l1 kd hint bogus",
        "task_loss": "cross_entropy mse bogus",
        "optimizer": "sgd adam adamw bogus",
        "lr_schedule": "cosine step constant none bogus",
        "finetune_schedule": "cosine step constant bogus",
        "granularity": "element neuron channel head row tensor bogus",
        "scheme": "global layerwise uniform bogus",
        "schedule": "oneshot iterative bogus",
        "spacing": "geometric linear bogus",
        "device": "auto cpu cuda cuda:7 tpu mps",
        "split": "test val train bogus",
        "nm": "2:4 4:2 0:4 1:1 2: x 2:4:8",
        "index_bits": "auto 0 1 4 8 33 x",
        "codec": "auto raw huffman ans zip",
        "sram": "1MB 64KiB 0 -1 x 1e99",
        "range": "minmax percentile mse bogus",
        "init": "linear random density kmeans++ bogus",
        "unhooked": "error skip keep bogus",
        "transfer": "train noise shift bogus",
        "hint_layer": "fc1 fc9 *",
        "guided_layer": "fc1 fc9",
        "per_layer_bits": "fc1=2 fc9=3 fc1=x fc1 =2 fc1=99",
        "layers": "fc1 fc1,fc2 nomatch * , fc*.bias",
        "skip": "fc1 nomatch *",
        "exclude": "fc1 * nomatch",
        "option": "hessian=ggn k=2 damp=-1 x =1 bogus=1 damping=nan",
        "criterion_options": "obd.hessian=ggn x magnitude.k=2 {} bogus",
        "model_kwargs": '{} {"dropout":2} [1] x {"bogus":1} {"hidden":-1}',
        "quantizers": "kmeans:4 uniform bogus kmeans:99",
        "action": "list check fetch bogus",
        "name": "digits mnist bogus {file} {dir} {missing} {npz}",
    }.items()
}
PATHS = [
    "{missing}",
    "{file}",
    "{dir}",
    "{run}",
    "{pq}",
    "{bsc}",
    "{npz}",
    "",
    "{missing}/a/b",
    "{file}/child",
    "{json}",
]
OUTS = [
    "{out}",
    "{wfile}",
    "{wdir}",
    "{wfile}/child",
    "",
    ".",
    "{out}/a/b",
    "{out}.bsc",
    "{out}.html",
]
PATH_DESTS = {"run", "target", "teacher", "load", "layer_sparsity", "recipe", "data", "out"}
NAMES["student"] = NAMES["model"] + ["{run}", "{missing}"]
NAMES["data"] = ["digits", "mnist", "bogus"] + PATHS


def _commands() -> dict[str, argparse.ArgumentParser]:
    from brainsurgeon.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = _commands()


def _options(cmd: str) -> list[argparse.Action]:
    return [a for a in COMMANDS[cmd]._actions if a.option_strings and a.dest != "help"]


def _positionals(cmd: str) -> list[argparse.Action]:
    return [a for a in COMMANDS[cmd]._actions if not a.option_strings]


def _values(action: argparse.Action) -> list[str]:
    dest = action.dest
    if dest in COST:
        return COST_POOL + (["magnitude", "bogus", "0.5,0.9"] if dest != "epochs" else [])
    if dest in NAMES:
        return NAMES[dest] + ["", "bogus"]
    if dest == "out":  # never a fixture: --force would replace it for the later examples
        return OUTS
    if dest in PATH_DESTS:
        return PATHS
    if action.choices:
        return [*map(str, action.choices), "bogus", ""]
    kind = getattr(action.type, "__name__", None)
    if kind == "int":
        return INTS
    if kind == "float":
        return FLOATS
    return STRINGS


def _split(base: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """Positionals (the tokens before the first option) and ``{option: value or None}``."""
    first = next((i for i, t in enumerate(base) if t.startswith("--")), len(base))
    pos, rest, opts = list(base[:first]), base[first:], {}
    for i, token in enumerate(rest):
        if token.startswith("--"):
            nxt = rest[i + 1] if i + 1 < len(rest) else "--"
            opts[token] = None if nxt.startswith("--") else nxt
    return pos, opts


@st.composite
def command_lines(draw) -> list[str]:
    """A command line: the base of a random command with 1-4 mutations."""
    cmd = draw(st.sampled_from(sorted(BASE)))
    pos, opts = _split(BASE[cmd])
    extra: list[str] = []
    options = _options(cmd)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "set", "set", "flag", "drop", "pos", "extra"]))
        if kind in ("set", "flag") and options:
            action = draw(st.sampled_from(options))
            flag = action.option_strings[-1]
            if cmd == "demo" and action.dest == "device":
                continue  # --device tpu keeps the demo from running
            if action.nargs == 0:
                opts[flag] = None
            else:
                opts[flag] = draw(st.sampled_from(_values(action)))
        elif kind == "drop" and opts:
            flag = draw(st.sampled_from(sorted(opts)))
            if flag.lstrip("-").replace("-", "_") not in COST and (cmd, flag) not in KEEP:
                opts.pop(flag)
        elif kind == "pos" and pos:
            k = draw(st.integers(0, len(pos) - 1))
            actions = _positionals(cmd)
            action = actions[min(k, len(actions) - 1)] if actions else None
            pool = _values(action) if action is not None else PATHS
            pos[k] = draw(st.sampled_from(pool))
        elif kind == "extra":
            extra.append(draw(st.sampled_from(["--bogus", "x", "--", "-", "--out", "-1", ""])))
    argv = [cmd, *pos]
    for flag, value in opts.items():
        argv += [flag] if value is None else [flag, value]
    quiet = draw(st.booleans())
    return argv + extra + (["--quiet"] if quiet else [])


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("fuzz-cli")
    made = tiny
    (root / "fixtures").mkdir()
    (root / "fixtures" / "plain.txt").write_text("not a run\n")
    (root / "fixtures" / "cfg.json").write_text('{"format": "brainsurgeon-run"}')
    (root / "fixtures" / "empty").mkdir()
    recipe = root / "fixtures" / "tiny.yaml"
    recipe.write_text(
        "name: tiny\ndata: digits\nmodel: mlp:64-8-10\nsteps:\n"
        "  - train: {epochs: 1}\n  - prune: {amount: 0.5}\n  - evaluate: {split: test}\n"
        "report: false\n"
    )
    import numpy as np

    npz = root / "fixtures" / "small.npz"
    rng = np.random.default_rng(0)
    np.savez(
        npz,
        x_train=rng.random((60, 16), np.float32),
        y_train=rng.integers(0, 3, 60),
        x_test=rng.random((20, 16), np.float32),
        y_test=rng.integers(0, 3, 20),
    )
    yield {
        "run": str(made["run"]),
        "pq": str(made["pq"]),
        "bsc": str(made["bsc"]),
        "file": str(root / "fixtures" / "plain.txt"),
        "json": str(root / "fixtures" / "cfg.json"),
        "dir": str(root / "fixtures" / "empty"),
        "npz": str(npz),
        "recipe": str(recipe),
        "root": root,
    }
    TALLY.write()


def _fill(argv: list[str], paths: dict, work: Path) -> list[str]:
    values = {k: v for k, v in paths.items() if isinstance(v, str)}
    values.update(out=str(work / "out"), missing=str(work / "missing"))
    values.update(wfile=str(work / "file.txt"), wdir=str(work / "emptydir"))
    (work / "file.txt").write_text("a file\n")
    (work / "emptydir").mkdir(exist_ok=True)
    out = []
    for token in argv:
        for key, value in values.items():
            token = token.replace("{" + key + "}", value)
        out.append(token)
    return out


counter = [0]


def check_command_line(argv: list[str], paths: dict) -> None:
    root = Path(paths["root"]) / "work"
    with example_dir(root, counter) as work:
        real = _fill(argv, paths, work)
        outputs = tuple(work / n for n in ("out", "out.html", "out.bsc"))
        result = run_main(real)
        verdict = judge(
            result, quiet="--quiet" in real, json_out="--json" in real, work=work, outputs=outputs
        )
        if verdict[0] != "failure" and (leaks := _leaks(paths)):
            verdict = ("failure", f"wrote into the fixtures: {leaks}")
    TALLY.check(verdict, printable(argv))


def _leaks(paths: dict) -> list[str]:
    roots = [Path(paths["root"]) / "fixtures", Path(paths["run"]).parent]
    return [str(p) for r in roots for p in r.rglob(".*") if p.name.endswith((".tmp", ".old"))]


@fuzz_settings(default=60)
@given(argv=command_lines())
def test_every_command_works_or_refuses_in_one_line(argv, paths):
    check_command_line(argv, paths)


def test_the_base_command_lines_work(paths):
    """The base of every command is valid (but demo's, and drop's: an MLP has no residual
    blocks), so mutations start from a working input."""
    for cmd, base in BASE.items():
        if cmd in ("demo", "drop"):
            continue
        root = Path(paths["root"]) / "work"
        with example_dir(root, counter) as work:
            result = run_main(_fill([cmd, *base, "--quiet"], paths, work))
        assert result.code == 0 and result.error is None, (cmd, result.stderr, result.error)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--epochs", "x"], "invalid int value: 'x'"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["prune", "{run}"], "the following arguments are required: --out"),
        (["evaluate", "{file}"], "not a directory"),
    ],
)
def test_real_exit_code_and_one_line(argv, fragment, paths, tmp_path):
    """The real entry point in a subprocess: exit code 2, one line on stderr, no usage text."""
    proc = run_cli(*_fill(argv, paths, tmp_path), timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert fragment in lines[0] and lines[0].startswith("brainsurgeon"), lines[0]
    assert "Traceback" not in proc.stderr and not proc.stdout.strip()


def test_json_errors_stay_off_stdout(paths, tmp_path):
    proc = run_cli("inspect", str(tmp_path / "nope"), "--json", timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    with pytest.raises(json.JSONDecodeError):
        json.loads(proc.stderr)
