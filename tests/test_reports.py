"""Plots, the self-contained HTML report, and its rendering in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainsurgeon import runs
from brainsurgeon.data import load_data
from brainsurgeon.errors import RunDirError
from brainsurgeon.models import build_model
from brainsurgeon.pruning.masks import set_mask
from brainsurgeon.reports import build_report, histogram_grid, line_plot, scatter, write_report
from brainsurgeon.training import TrainConfig, evaluate, fit
from conftest import run_cli

CHROMIUM = Path("/usr/bin/chromium")
ORANGE, HEADER = (255, 127, 14), (238, 242, 247)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory) -> Path:
    """A trained digits MLP, and a child run with half of fc1 pruned plus three plots."""
    root = tmp_path_factory.mktemp("report")
    data = load_data("digits")
    model = build_model("mlp:64-32-10", data.input_shape, data.num_classes)
    fit(model, data, TrainConfig(epochs=3, seed=0), progress=False)
    cfg = {"data": data.spec, "normalization": data.normalization, "seed": 0}
    runs.save(model, root / "base", config=cfg)
    w = model.fc1.weight.detach()
    set_mask(model.fc1, "weight", w.abs() > w.abs().median())
    child = runs.load_run(root / "base").child_config({"step": "prune", "amount": 0.5})
    runs.save(model, root / "pruned", config=child)
    make_plots(root / "pruned" / "experiment")
    return root / "pruned"


def make_plots(folder: Path) -> list[Path]:
    x = [0.5, 0.7, 0.9]
    rng = np.random.default_rng(0)
    return [
        line_plot(
            folder / "accuracy.png",
            {
                "magnitude": {"x": x, "mean": [0.95, 0.93, 0.8], "std": [0.01, 0.01, 0.03]},
                "random": {"x": x, "mean": [0.9, 0.7, 0.3], "std": None},
            },
            xlabel="sparsity",
            ylabel="accuracy",
            title="accuracy",
            reference=0.96,
        ),
        histogram_grid(
            folder / "hist.png",
            {f"w{i}": rng.normal(size=400) for i in range(4)},
            xlabel="value",
            title="histograms",
        ),
        scatter(
            folder / "scatter.png",
            {"obd": (rng.normal(size=200), rng.random(200))},
            xlabel="mean",
            ylabel="sd",
            title="scatter",
        ),
    ]


def non_white_fraction(path: Path) -> float:
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    return float((img.sum(axis=2) < 3 * 245).mean())


def color_pixels(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(img - np.array(rgb)).max(axis=2) <= tol).sum())


def test_plots_are_written_and_not_empty(tmp_path):
    paths = make_plots(tmp_path)
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(path).size[0] >= 300
        assert non_white_fraction(path) > 0.02, f"{path.name} looks blank"
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_report_is_self_contained_with_tables_and_accuracy(pruned_run):
    page = build_report(pruned_run, latency=False)
    assert not re.search(r'(src|href)="(https?:|//)', page), "external reference in the report"
    # 3 experiment plots + the run's own three (per-layer kept/bits, weight histograms,
    # accuracy against file size)
    assert page.count("<img ") == 6 and page.count("data:image/png;base64,") == 6
    assert "accuracy against the compressed file" in page
    assert "bytes as `brainsurgeon export` writes it" in page and "Parametrized" not in page
    history = re.search(r'<table class="history">(.*?)</table>', page, re.S).group(1)
    assert "<td>prune</td>" in history
    assert 'alt="per-layer kept weights and bits"' in page
    assert 'alt="nonzero weight histograms"' in page
    layers = re.search(r'<table class="layers">(.*?)</table>', page, re.S).group(1)
    assert ">fc1<" in layers and ">fc2<" in layers and ">total<" in layers
    # fc1 has 1024 of 2048 weights pruned: its nonzeros are 1024 weights + 32 biases
    assert ">1,056<" in layers
    run = runs.load_run(pruned_run)
    acc = evaluate(run.model, run.data(progress=False))["accuracy"]
    assert f"test accuracy after</th><td>{100 * acc:.2f}%" in page
    assert "test accuracy before" in page and "energy / inference" in page


def test_experiment_dir_without_run_and_bad_targets(tmp_path):
    make_plots(tmp_path / "exp")
    page = build_report(tmp_path / "exp")
    assert page.count("<img ") == 3 and "Model summary" not in page
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="holds neither a run .* nor experiment plots"):
        build_report(tmp_path / "empty")
    with pytest.raises(RunDirError, match="does not exist; pass a run directory"):
        write_report(tmp_path / "missing")


def cli(*args: str):
    return run_cli(*args)


def test_cli_report_json_and_bad_input(pruned_run, tmp_path):
    out = tmp_path / "r.html"
    done = cli("report", str(pruned_run), "--out", str(out), "--no-latency", "--json", "-q")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["report"] == str(out) and payload["plots"] == 3 and out.stat().st_size > 10_000
    bad = cli("report", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "is not an existing directory" in bad.stderr
    bad = cli("report", str(pruned_run), "--sram", "12XB", "--out", str(tmp_path / "x.html"))
    assert bad.returncode == 2 and "--sram: cannot read '12XB'" in bad.stderr
    assert not (tmp_path / "x.html").exists()


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run(
        [str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=90
    )


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium not installed (/usr/bin/chromium); "
    "install it with `apt-get install -y chromium` to run this test",
)
def test_report_renders_in_chromium(pruned_run, tmp_path):
    report = write_report(pruned_run, tmp_path / "report.html", latency=False)
    url = report.resolve().as_uri()
    dom = chromium("--dump-dom", url, profile=tmp_path / "p1").stdout
    assert dom.count('data-loaded="1"') == 6, "not every plot was decoded by the browser"
    assert dom.count("<table") == 4 and "Per-layer table" in dom
    shot = screenshot(report, tmp_path / "shot.png", tmp_path / "p2")
    top, bottom = shot[: shot.shape[0] // 3], shot[shot.shape[0] // 3 :]
    assert color_pixels(top, HEADER, tol=3) > 2_000, "table headers not visible"
    # the plots are the only colourful things on the page: compare with the page minus images
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<img [^>]*>", "", report.read_text()))
    control = screenshot(bare, tmp_path / "bare.png", tmp_path / "p3")
    assert colourful(control) < 500, "the page without plots should be grey and white"
    assert colourful(bottom) > 10_000, "the plots are not visible in the screenshot"
    assert color_pixels(bottom, ORANGE) > 100, "second series (C1 orange) not visible"


def screenshot(page: Path, out: Path, profile: Path) -> np.ndarray:
    chromium(
        f"--screenshot={out}", "--window-size=1280,2600", page.resolve().as_uri(), profile=profile
    )
    img = np.asarray(Image.open(out).convert("RGB"), dtype=np.int32)
    assert img.shape[:2] == (2600, 1280)
    return img


def colourful(img: np.ndarray) -> int:
    """Pixels with clearly unequal channels (plot colours, not greys)."""
    return int((img.max(axis=2) - img.min(axis=2) > 60).sum())
