"""ONNX export: dense, shrunk and int8 runs through the CLI and the API; onnxruntime's outputs
against PyTorch's (the oracle); the ``onnx`` runtime; refusals that leave no file."""

from __future__ import annotations

import json
import sys

import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install brainsurgeon[deploy])")
ort = pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime")

import brainsurgeon as bs  # noqa: E402
from brainsurgeon.deploy import OnnxExport, export_onnx  # noqa: E402
from brainsurgeon.errors import ConfigError, NumericalError  # noqa: E402
from conftest import run_cli  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def shrunk_run(trained_run, digits, tmp_path_factory):
    """The digits run with half of fc1's and fc2's neurons cut out (a 64-150-50-10 model)."""
    from brainsurgeon.structured.api import shrink_model

    model = bs.load(trained_run)
    cfg = bs.PruneConfig(granularity="neuron", criterion="l2", amount=0.5, scheme="per-layer")
    bs.prune(model, cfg, digits, progress=False)
    assert shrink_model(model).units == {"fc1": [150, 300], "fc2": [50, 100]}
    path = tmp_path_factory.mktemp("onnx") / "shrunk"
    bs.save(model, path, config={"data": digits.spec, "normalization": digits.normalization})
    return path


def _ort_outputs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name, inp.shape[0], out.shape[0]) == ("input", "output", "batch", "batch")
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _torch_outputs(run, x):
    with torch.no_grad():
        return bs.load_run(run, inference=True).model(x)


@pytest.mark.parametrize("which", ["trained_run", "shrunk_run"])
def test_cli_float_export_matches_pytorch_at_any_batch(which, request, digits, tmp_path):
    run = request.getfixturevalue(which)
    out = tmp_path / "m.onnx"
    proc = run_cli("export", str(run), "--format", "onnx", "--out", str(out), "--json", check=True)
    payload = json.loads(proc.stdout)
    assert payload["check"]["passed"] and payload["check"]["relative_error"] <= 1e-4
    assert payload["check"]["samples"] == min(256, len(digits.test))
    assert (
        payload["input_shape"] == ["batch", 1, 8, 8] and payload["file_bytes"] == out.stat().st_size
    )
    for n in (1, 7):
        x = digits.test.x[:n]
        ref = _torch_outputs(run, x)
        torch.testing.assert_close(
            _ort_outputs(out, x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max()
        )


def test_cli_int8_export_is_quantized_and_close(trained_run, digits, tmp_path):
    import onnx

    out = tmp_path / "q.onnx"
    proc = run_cli("export", str(trained_run), "--out", str(out), "--runtime", "int8", check=True)
    assert "relative error" in proc.stdout and "int8 (dynamic)" in proc.stdout
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    x = digits.test.x[:200]
    ref, got = _torch_outputs(trained_run, x), _ort_outputs(out, x)
    assert float((got - ref).abs().max() / ref.abs().max()) <= 0.05
    assert float((got.argmax(1) == ref.argmax(1)).float().mean()) >= 0.95


def test_static_int8_and_fixed_batch_through_the_api(shrunk_run, digits, tmp_path):
    out = tmp_path / "s.onnx"
    res = export_onnx(shrunk_run, out, runtime="int8", int8="static", batch_dynamic=False, batch=4)
    assert res.check["passed"] and res.int8 == "static" and res.input_shape[0] == 4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == 4
    assert {n.op_type for n in __import__("onnx").load(out).graph.node} >= {"QuantizeLinear"}


def test_api_export_dispatches_on_the_suffix_and_reads_bsc(trained_run, digits, tmp_path):
    res = bs.export(trained_run, tmp_path / "a.onnx")
    assert isinstance(res, OnnxExport) and res.check["passed"]
    bsc = tmp_path / "m.bsc"
    bs.export(trained_run, bsc)
    again = export_onnx(bsc, tmp_path / "b.onnx")  # a compressed file loads baked
    assert again.check["source"].startswith("digits test split")
    x = digits.test.x[:5]
    torch.testing.assert_close(_ort_outputs(tmp_path / "b.onnx", x), _ort_outputs(res.path, x))


def test_onnx_runtime_module_matches_and_evaluates(shrunk_run, digits):
    from brainsurgeon.runtime import to_inference

    model = bs.load(shrunk_run)
    fast = to_inference(model, "onnx")
    x = digits.test.x[:9]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model.eval()(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast(x[:1]), model(x[:1]), rtol=1e-4, atol=1e-5)
    acc = bs.evaluate(fast, digits)["accuracy"]
    assert acc == pytest.approx(bs.evaluate(model, digits)["accuracy"], abs=1e-9)
    q = to_inference(model, "onnx-int8")
    assert float((q(x) - fast(x)).abs().max()) <= 0.05 * float(fast(x).abs().max())


def test_a_graph_beyond_tolerance_is_refused_and_not_written(trained_run, tmp_path, monkeypatch):
    import brainsurgeon.deploy.onnx as mod

    monkeypatch.setattr(mod, "INT8_TOLERANCE", 1e-9)
    out = tmp_path / "q.onnx"
    with pytest.raises(NumericalError, match="nothing written"):
        export_onnx(trained_run, out, runtime="int8")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="sparse runtime"):
        export_onnx(trained_run, out, runtime="sparse")


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    from brainsurgeon.deploy import require_onnx

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install brainsurgeon\[deploy\]"):
        require_onnx()


BAD = [
    (["--out", "{tmp}/x.onnx", "--runtime", "fast"], "dense or int8"),
    (["--format", "onnx", "--out", "{tmp}/x.bsc"], "writes a .onnx file"),
    (["--out", "{tmp}/x.bsc", "--runtime", "int8"], "apply to --format onnx only"),
    (["--out", "{tmp}/x.onnx", "--int8", "static"], "--runtime int8 only"),
]


def _main(capsys, *argv: str) -> tuple[int, list[str]]:
    """The CLI entry point in-process (what ``run_cli`` runs, without a new interpreter)."""
    from brainsurgeon.cli.main import main

    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("args, message", BAD)
def test_bad_options_exit_2_with_one_line_and_no_file(trained_run, tmp_path, capsys, args, message):
    code, err = _main(capsys, "export", str(trained_run), *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and len(err) == 1 and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_missing_run_exits_2(tmp_path, capsys):
    code, err = _main(capsys, "export", str(tmp_path / "nope"), "--out", str(tmp_path / "x.onnx"))
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]
    assert list(tmp_path.iterdir()) == []
