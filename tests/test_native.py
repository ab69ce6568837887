"""The C runtime: generated C99 compiled here against PyTorch (the oracle) on chain models,
the ``native`` runtime, ``export --format c`` and the refusals (non-chains, unknown layers)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import brainsurgeon as bs
from brainsurgeon.deploy import CExport, NativeModule, export_c
from brainsurgeon.deploy.c_source import chain
from brainsurgeon.deploy.native import c_latency_ms, timing_program
from brainsurgeon.errors import ConfigError, UnsupportedLayerError
from conftest import run_cli
from structured_models import ConvFlatten, Residual

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="no C compiler on PATH"
)


def _close(native: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = model(x)
    got = native(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def _bn(n: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(n)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.3, 3.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    return bn


ACTS = [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.2), nn.Tanh(), nn.Sigmoid(), nn.GELU(),
        nn.GELU("tanh"), nn.SiLU(), nn.ELU(0.7)]  # fmt: skip


@pytest.mark.parametrize("act", ACTS, ids=lambda a: repr(a))
def test_every_activation_matches_pytorch(act):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, 9), act, nn.Linear(9, 5), act).eval()
    _close(NativeModule(model, (13,)), model, 3 * torch.randn(7, 13))


def test_flatten_batchnorm_dropout_and_log_softmax_in_nested_sequentials():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Flatten(), nn.Sequential(nn.Linear(48, 21), _bn(21), nn.ReLU(), nn.Dropout(0.5)),
        nn.Linear(21, 6, bias=False), nn.Identity(), nn.LogSoftmax(dim=-1),
    ).eval()  # fmt: skip
    native = NativeModule(model, (3, 4, 4))
    for n in (1, 5):  # batch 1 and a looped batch
        _close(native, model, torch.randn(n, 3, 4, 4))
    assert native.output_shape == (6,)


class Functional(nn.Module):
    """A custom module torch.fx traces to a chain: flatten, functional activations, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 11), nn.Linear(11, 7), nn.Linear(7, 4)
        self.soft = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.a(torch.flatten(x, 1)), 0.05)
        x = F.gelu(self.b(x), approximate="tanh").relu()
        return self.soft(torch.sigmoid(self.c(x)))


def test_a_custom_module_is_followed_through_torch_fx():
    torch.manual_seed(2)
    model = Functional().eval()
    steps = chain(model, (4, 4))
    assert [s.kind for s in steps] == ["flatten", "linear", "act", "linear", "act", "act",
                                       "linear", "act", "softmax"]  # fmt: skip
    assert steps[2].param == pytest.approx(0.05)
    _close(NativeModule(model, (4, 4)), model, torch.randn(6, 4, 4))


def test_the_digits_run_and_its_shrunk_model_match(trained_run, digits):
    from brainsurgeon.runtime import to_inference
    from brainsurgeon.structured.api import shrink_model

    model = bs.load(trained_run)
    fast = to_inference(model, "native")
    x = digits.test.x[:50]
    _close(fast, model.eval(), x)
    assert bs.evaluate(fast, digits)["accuracy"] == pytest.approx(
        bs.evaluate(model, digits)["accuracy"], abs=1e-9
    )
    cfg = bs.PruneConfig(granularity="neuron", criterion="l2", amount=0.5, scheme="per-layer")
    bs.prune(model, cfg, digits, progress=False)
    shrink_model(model)
    _close(to_inference(model, "native"), model.eval(), x)


@pytest.mark.parametrize(
    "model, shape, message",
    [
        (Residual(6, 3), (6,), "each taking the previous one's output"),
        (ConvFlatten(1, 3), (1, 6, 6), "Conv2d"),
        (nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4)), (4,), "LSTM"),
        (nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=0)), (4,), "last dim"),
        (nn.Sequential(nn.Linear(5, 3)), (4,), "flatten first"),
        (nn.Sequential(nn.Flatten(2)), (2, 3), "from dim 1"),
    ],
    ids=["residual", "conv", "lstm", "softmax-dim0", "wrong-width", "flatten-2"],
)
def test_what_the_c_runtime_cannot_run_is_refused_by_name(model, shape, message):
    with pytest.raises(UnsupportedLayerError, match=message):
        NativeModule(model.eval(), shape)


def test_wrong_input_shape_is_a_clear_error():
    native = NativeModule(nn.Sequential(nn.Linear(4, 2)), (4,))
    with pytest.raises(ConfigError, match=r"takes inputs \(N, 4\), got \(3, 5\)"):
        native(torch.zeros(3, 5))


def test_the_library_is_cached_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSURGEON_CACHE", str(tmp_path))
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    a, b = NativeModule(model, (3,)), NativeModule(model, (3,))
    assert a.library == b.library and a.library.parent == tmp_path / "native"
    assert len(list((tmp_path / "native").iterdir())) == 1  # no temp files left


def test_the_timing_program_reports_blocks():
    native = NativeModule(nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3)), (30,))
    blocks = c_latency_ms(timing_program(native.source), 2, 0.02)
    assert len(blocks) >= 5 and all(0 < b < 10 for b in blocks)


def test_cli_export_c_writes_source_and_header_that_match(trained_run, tmp_path):
    out = tmp_path / "lenet.c"
    proc = run_cli("export", str(trained_run), "--out", str(out), "--json", check=True)
    payload = json.loads(proc.stdout)
    assert payload["check"]["passed"] and payload["check"]["top1_agreement"] == 1.0
    assert payload["input_shape"] == [1, 8, 8] and payload["output_shape"] == [10]
    assert payload["batch1_latency_us"] > 0 and payload["source_bytes"] == out.stat().st_size
    header = (tmp_path / "lenet.h").read_text()
    assert "void bs_model_forward(int n, const float *x, float *y);" in header
    assert "#define BS_MODEL_IN 64" in header
    mean = bs.load_run(trained_run).data().normalization["mean"]  # a C caller must normalise
    assert f"#define BS_MODEL_MEAN {mean!r}f" in header and "normalised as in training" in header
    assert payload["normalization"]["mean"] == mean
    # the written file, compiled on its own, computes the model (the oracle: PyTorch)
    native = NativeModule(bs.load_run(trained_run, inference=True).model, (1, 8, 8))
    assert native.source == out.read_text()


def test_a_plain_module_exports_with_its_input_shape(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    result = export_c(model, tmp_path / "p.c", input_shape=(5,), name="tiny", check_samples=8)
    assert result.check["samples"] == 8 and result.symbol == "tiny_forward"
    assert "int tiny_in_features(void)" in (tmp_path / "p.c").read_text()
    with pytest.raises(ConfigError, match="input_shape"):
        export_c(model, tmp_path / "q.c")


def test_api_export_dispatches_on_dot_c(trained_run, tmp_path):
    result = bs.export(trained_run, tmp_path / "m.c")
    assert isinstance(result, CExport) and result.check["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.c", "m.h"]


def test_a_refused_model_leaves_no_file(tmp_path):
    with pytest.raises(UnsupportedLayerError):
        export_c(ConvFlatten(1, 3).eval(), tmp_path / "m.c", input_shape=(1, 6, 6))
    assert list(tmp_path.iterdir()) == []


BAD = [
    (["--format", "c", "--out", "{tmp}/x.bsc"], "writes a .c file"),
    (["--out", "{tmp}/x.c", "--runtime", "int8"], "apply to --format onnx only"),
    (["--out", "{tmp}/x.c", "--codec", "raw"], "--format bsc only"),
    (["--out", "{tmp}/x.bsc", "--check-samples", "9"], "apply to --format onnx and c only"),
    (["--format", "cpp", "--out", "{tmp}/x.c"], "bsc, onnx, hf or c"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_options_exit_2_with_one_line_and_no_file(trained_run, tmp_path, capsys, args, message):
    from brainsurgeon.cli.main import main

    code = main(["export", str(trained_run), *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_an_existing_header_is_not_overwritten_without_force(trained_run, tmp_path, capsys):
    from brainsurgeon.cli.main import main

    (tmp_path / "x.h").write_text("mine")
    code = main(["export", str(trained_run), "--out", str(tmp_path / "x.c")])
    assert code == 2 and "--force" in capsys.readouterr().err
    assert (tmp_path / "x.h").read_text() == "mine" and not (tmp_path / "x.c").exists()
