"""One self-contained HTML report: model summary, per-layer table, accuracy, size, latency,
energy, and every experiment plot found in a directory (PNGs embedded as base64).

The page has no external references (no scripts, fonts or images from elsewhere), so it can be
mailed or archived as a single file. Each ``<img>`` marks itself ``data-loaded`` when the
browser has decoded it, which the browser test reads back from the DOM.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
from pathlib import Path
from typing import Any

from .._io import write_text
from ..errors import RunDirError
from ..runs import CONFIG_FILE, Run, load_run
from .sections import history_table, layer_table, overview, size_chart, table_html

REPORT_FILE = "report.html"
SUMMARY_FILES = ("summary.md", "findings.md")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#222;max-width:1200px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;border-bottom:2px solid #ddd;
padding-bottom:4px;margin-top:28px}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#eef2f7}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#f8f8f8}
.plots{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;border:1px solid #ddd;padding:6px;background:#fff}
figure img{max-width:560px;display:block}figcaption{font-size:12px;color:#555;margin-top:4px}
pre{background:#f5f5f5;padding:10px;font-size:12px;white-space:pre-wrap}
.muted{color:#777;font-size:12px}
"""


def write_report(
    target: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    sram: int | str | None = None,
    latency: bool = True,
) -> Path:
    """Build the report for a run directory, a compressed ``.bsc`` file or an experiment
    directory and write it.

    ``out`` defaults to ``<target>/report.html`` (``<file>.html`` for a ``.bsc``). The file is
    written atomically.
    """
    from ..container import is_compressed_file

    target = Path(target)
    if not target.exists():
        raise RunDirError(
            f"{target} does not exist; pass a run directory, a .bsc file or a directory "
            "written by compare / study / sensitivity / run"
        )
    is_file = is_compressed_file(target)
    if not target.is_dir() and not is_file:
        raise RunDirError(
            f"{target} is not a directory or a .bsc file; pass a run, a compressed model "
            "file or an experiment directory"
        )
    page = build_report(load_run(target) if is_file else target, sram=sram, latency=latency)
    default = target.with_suffix(".html") if is_file else target / REPORT_FILE
    out = Path(out) if out is not None else default
    write_text(out, page)
    return out


def build_report(
    target: str | os.PathLike | Run,
    *,
    before: Run | None = None,
    plots_dir: str | os.PathLike | None = None,
    sram: int | str | None = None,
    latency: bool = True,
    title: str | None = None,
) -> str:
    """The report page as a string.

    ``target``: a :class:`Run`, a run directory, or an experiment directory (its plots are
    shown and, when an experiment JSON names its run, that run is summarised too).
    ``before``: the run to compare accuracy against (default: the parent recorded in history).
    """
    run, folder = _resolve(target)
    plots_dir = Path(plots_dir) if plots_dir is not None else folder
    sections: list[str] = []
    if run is not None:
        sections.append(_run_sections(run, before, sram=sram, latency=latency))
    plots = find_plots(plots_dir) if plots_dir is not None else []
    summaries = _summaries(plots_dir) if plots_dir is not None else []
    if run is None and not plots and not summaries:
        raise RunDirError(
            f"{folder} holds neither a run ({CONFIG_FILE}) nor experiment plots; "
            "pass a run directory or the --out of compare / study / sensitivity"
        )
    sections.append(_experiments_section(plots, summaries, plots_dir))
    name = title or f"brainsurgeon report: {folder.name if folder else run.path.name}"
    return _page(name, "\n".join(sections))


def find_plots(folder: str | os.PathLike) -> list[Path]:
    """Every ``*.png`` under ``folder`` (hidden and temporary entries skipped), sorted."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.rglob("*.png")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        found.append(path)
    return found


def load_techniques() -> None:
    """Import the modules that register parametrizations, so any run directory can load.

    ``brainsurgeon.runs.load_run`` re-creates masks and quantizers by registry name; in a fresh
    process those registries are only filled once their modules are imported.
    """
    import importlib

    for name in ("brainsurgeon.pruning.masks", "brainsurgeon.pruning", "brainsurgeon.quantization"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _resolve(target) -> tuple[Run | None, Path | None]:
    load_techniques()
    if isinstance(target, Run):
        return target, Path(target.path)
    folder = Path(target)
    if (folder / CONFIG_FILE).exists():
        return load_run(folder), folder
    run_path = _experiment_run(folder)
    return (load_run(run_path) if run_path else None), folder


def _experiment_run(folder: Path) -> Path | None:
    """The run an experiment or recipe folder names in its JSON (``run`` / ``final_run``)."""
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        for key in ("run", "final_run"):  # experiments name their run; recipes their result
            run = data.get(key) if isinstance(data, dict) else None
            if isinstance(run, str) and (Path(run) / CONFIG_FILE).exists():
                return Path(run)
    return None


def _run_sections(run: Run, before: Run | None, *, sram, latency: bool) -> str:
    from ..container.sizes import file_table, layer_bytes
    from ..metrics import example_input, measure_latency, summarize
    from ..metrics.energy import energy_report
    from ..runtime import to_inference
    from ..training import evaluate
    from ..training.evaluation import recorded_loss

    shape = tuple(run.config["model"]["input_shape"])
    example = example_input(shape, run.model)  # token ids for an embedding model
    summary = summarize(run.model, example)
    energy = energy_report(run.model, example, sram_bytes=sram)
    data = run.data(progress=False) if "data" in run.config else None
    loss = recorded_loss(run.config)
    after = evaluate(run.model, data, loss=loss) if data is not None else None
    before = before if before is not None else _parent(run)
    has_prior = before is not None and data is not None
    prior = evaluate(before.model, data, loss=loss) if has_prior else None
    lat = measure_latency(to_inference(run.model), shape, min_run_time=0.1) if latency else None
    file = file_table(run)
    per_layer = layer_bytes(file)
    points = _size_points(run, before, file, after, prior)
    parts = [
        overview(run, summary["totals"], file, after, prior, lat, energy),
        "<h2>Per-layer table</h2>" + layer_table(summary, per_layer),
        "<h2>The model at a glance</h2>" + _model_plots(run.model, summary),
        "<h2>Energy estimate (Horowitz 45 nm)</h2>" + _energy_table(energy),
        "<h2>History</h2>" + size_chart(points) + history_table(run),
    ]
    return "\n".join(parts)


def _size_points(run, before, file, after, prior) -> list[tuple[str, int, float | None]]:
    """(label, file bytes, accuracy): the run before, each recorded step, the run now."""
    from ..container.sizes import file_table

    points = []
    if before is not None and prior is not None:
        points.append(("before", file_table(before)["file_bytes"], prior.get("accuracy")))
    for step in run.config.get("history", []):
        recorded = isinstance(step, dict) and step.get("file_bytes")
        if recorded and step.get("accuracy") is not None:
            points.append((str(step.get("step", "?")), step["file_bytes"], step["accuracy"]))
    if after is not None:
        points.append(("now", file["file_bytes"], after.get("accuracy")))
    return points


def _model_plots(model, summary: dict[str, Any]) -> str:
    """Per-layer kept fraction and bits, and the nonzero-weight histograms, as embedded PNGs."""
    from ..training.loop import weight_targets
    from .plots import layer_overview_png, weight_histogram_png

    weights = {  # every compressible weight the adapter knows, "fc1" for "fc1.weight"
        name.removesuffix(".weight"): getattr(m, t).detach().cpu().flatten().numpy()
        for name, (m, t) in weight_targets(model).items()
    }
    images = [("per-layer kept weights and bits", layer_overview_png(summary["layers"]))]
    if weights:
        images.append(("nonzero weight histograms", weight_histogram_png(weights)))
    figures = "".join(
        f'<figure><img alt="{html.escape(c)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}" onload="this.dataset.loaded=\'1\'">'
        f"<figcaption>{html.escape(c)}</figcaption></figure>"
        for c, png in images
    )
    return f'<div class="plots">{figures}</div>'


def _parent(run: Run) -> Run | None:
    for step in reversed(run.config.get("history", [])):
        parent = step.get("parent") if isinstance(step, dict) else None
        if parent and (Path(parent) / CONFIG_FILE).exists():
            try:
                return load_run(parent)
            except RunDirError:
                return None
    return None


def _energy_table(energy: dict[str, Any]) -> str:
    header = ["layer", "MACs", "bits/weight", "format", "bytes read (model)", "compute pJ"]
    rows = [
        [
            r["name"],
            f"{r['macs']:,}",
            f"{r['bits_per_weight']:g}",
            r["format"],
            f"{r['stored_bytes']:,}",
            f"{r['compute_pj']:.4g}",
        ]
        for r in energy["layers"]
    ]
    t, s = energy["totals"], energy["sram"]
    budget = "no budget given" if s["budget_bytes"] is None else f"{s['budget_bytes']:,} B"
    note = (
        f"<p>Compute {t['compute_pj']:.4g} pJ + weight reads {t['weight_words_read']:,} "
        f"words from {s['memory'].upper()} {t['memory_pj']:.4g} pJ = "
        f"<b>{t['energy_pj']:.4g} pJ</b> per inference (SRAM: {budget}; fits: "
        f"{'yes' if s['fits'] else 'no'}; if in SRAM: {t['energy_pj_if_sram']:.4g} pJ). "
        f"Dense fp32: {energy['dense_fp32']['energy_pj']:.4g} pJ.</p>"
    )
    return table_html(header, rows, css="energy") + note


def _summaries(folder: Path) -> list[tuple[Path, str]]:
    out = []
    for name in SUMMARY_FILES:
        for path in sorted(folder.rglob(name)):
            if not any(p.startswith(".") for p in path.relative_to(folder).parts):
                out.append((path, path.read_text(errors="replace")))
    return out


def _experiments_section(plots: list[Path], summaries, folder: Path | None) -> str:
    if not plots and not summaries:
        return '<h2>Experiments</h2><p class="muted">no experiment plots in this directory</p>'
    parts = ["<h2>Experiments</h2>"]
    for path, text in summaries:
        rel = path.relative_to(folder)
        parts.append(f"<h3>{html.escape(str(rel))}</h3><pre>{html.escape(text)}</pre>")
    groups: dict[str, list[Path]] = {}
    for p in plots:
        groups.setdefault(str(p.parent.relative_to(folder)), []).append(p)
    for group, paths in groups.items():
        parts.append(f"<h3>{html.escape(group if group != '.' else 'plots')}</h3>")
        figures = "".join(_figure(p, folder) for p in paths)
        parts.append(f'<div class="plots">{figures}</div>')
    return "\n".join(parts)


def _figure(path: Path, folder: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(str(path.relative_to(folder)))
    return (
        f'<figure><img alt="{caption}" src="data:image/png;base64,{data}" '
        f"onload=\"this.dataset.loaded='1'\"><figcaption>{caption}</figcaption></figure>"
    )


def _page(title: str, body: str) -> str:
    from ..utils import environment

    env = environment()
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    meta = (
        f"generated {stamp} by brainsurgeon {env['brainsurgeon']} (torch {env['torch']}, "
        f"{env['torch_threads']} threads, {env['machine']})"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="muted">{html.escape(meta)}</p>'
        f"{body}</body></html>\n"
    )
