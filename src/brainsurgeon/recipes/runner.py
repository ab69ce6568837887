"""Run a recipe: train or load -> the steps (registered kinds: prune, quantize, factorize,
distill, fine-tune, evaluate, ...) -> report.

The output folder is built under a temporary name and moved into place only when every
step has finished, so it appears complete or not at all::

    OUT/start/         the model after the first step (trained) or as loaded: a run directory
    OUT/final/         the compressed model: a run directory
    OUT/model.bsc      the compressed model as one file (``brainsurgeon.load`` reads it)
    OUT/recipe.yaml    the recipe (also inside both run directories)
    OUT/result.json    before / after metrics, every step's record, seed, environment
    OUT/report.html    the HTML report of OUT/final (when ``report: true``)

``brainsurgeon run OUT/final/recipe.yaml --out AGAIN`` reproduces the run: every random
choice is seeded from the recipe's ``seed``.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import runs
from .._io import atomic_dir, recover, refuse_file_out, write_json, write_text
from ..errors import BrainsurgeonError, RunDirError
from ..training.checkpoint import epoch_checkpoints
from ..utils import determinism, environment, resolve_device, seed_everything
from .resume import StepStore
from .schema import Recipe, load_recipe, step_config
from .steps import STEPS, StepContext

RECIPE_FILE = "recipe.yaml"
FINAL_FILE = "model.bsc"


def run_recipe(
    recipe: str | os.PathLike | dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    force: bool = False,
    seed: int | None = None,
    log=None,
    resume: bool = False,
) -> dict[str, Any]:
    """Validate and run ``recipe`` (a YAML path or a dict) into ``out_dir``.

    ``seed`` overrides the recipe's seed; ``device`` its device (default: auto). Returns
    ``{"before", "after", "steps", "final_run", "start_run", "report", "out", "seed"}``;
    ``before`` / ``after`` hold test accuracy, the file size on disk, counts and batch-1/64
    latency, measured on the model as read back from its ``.bsc`` file; every step's record
    has its accuracy and ``file_bytes``. While it runs, finished steps are kept under
    ``out_dir/steps/`` (:mod:`brainsurgeon.recipes.resume`); ``resume`` continues after them
    (a finished ``out_dir`` is returned as it is).
    """
    r = load_recipe(recipe)
    if seed is not None and int(seed) != r.seed:  # store the recipe that really ran
        r.data["seed"] = int(seed)
        r.text = f"# {r.source} with seed {seed}\n" + yaml.safe_dump(r.data, sort_keys=False)
    out = Path(out_dir)
    if out.parent.is_dir():
        recover(out)  # a run killed while writing its final folder
    refuse_file_out(out)
    store = StepStore(out, r.data)
    if resume and (out / "result.json").exists():
        return json.loads((out / "result.json").read_text())
    empty = out.is_dir() and all(p.name.startswith(".") for p in out.iterdir())
    if out.exists() and not force and not (resume and (store.root.is_dir() or empty)):
        held = " and holds an unfinished run (pass --resume to continue it)" * store.root.is_dir()
        raise RunDirError(f"{out} already exists{held}; choose another --out or pass --force")
    device = resolve_device(device or r.data.get("device", "auto"))
    say = log or (lambda m: None)
    start = time.perf_counter()
    store.open(resume=resume)
    try:
        with atomic_dir(out, force=True) as tmp:
            result = _execute(r, tmp, out, device, progress, say, store)
            result["seconds"] = round(time.perf_counter() - start, 2)
            write_json(tmp / "result.json", result)
    except BaseException:
        store.discard_if_empty()  # a bad first step leaves nothing behind
        raise
    return result


def _execute(r: Recipe, tmp: Path, out: Path, device, progress, say, store) -> dict[str, Any]:
    seed_everything(r.seed)
    model, data, base_cfg = _start(r, device, progress, say)
    files = {RECIPE_FILE: r.text}
    write_text(tmp / RECIPE_FILE, r.text)
    history = list(base_cfg.get("history", []))
    compression = dict(base_cfg.get("compression", {}))
    start_point = (data, tmp, base_cfg, history, r, files, store)
    before = _start_point(model, *start_point) if "load" in r.data else None
    steps = []
    ctx = StepContext(model, data, device, progress, start=tmp / "start", compression=compression)
    reuse = True  # finished steps are kept up to the first one that must run again
    for i, (kind, options) in enumerate(r.steps):
        done = store.load(i, device, options) if reuse else None
        reuse = done is not None
        if done is None:
            say(f"step {i + 1}/{len(r.steps)}: {kind} {options or ''}")
            record = _run_step(r, i, kind, options, ctx, tmp, store)
            history.append({"step": kind, "recipe_step": i, **_brief(record)})
        else:
            say(f"step {i + 1}/{len(r.steps)}: {kind}: done earlier, kept")
            ctx.model, saved = done
            compression.clear()
            compression.update(saved["compression"])
            record = saved["record"]
            history.append(saved["history"])
        steps.append(record)
        if before is None:  # a new model: the starting point is the trained one
            before = _start_point(ctx.model, *start_point)
        if done is None:
            store.save(i, ctx.model, record, history[-1], compression)
    model = ctx.model
    options = compression.get("export", {}).get("options", {})
    after = _measure(model, data, tmp, options)
    history[-1]["parent"] = str(out / "start")
    final_cfg = {**base_cfg, "history": history, "compression": compression, "recipe": r.data}
    final_cfg.update(determinism(device))
    written = _export_final(model, tmp, final_cfg, after, options)
    after.update(file_bytes=written.file_bytes, file_ratio=written.ratio)
    runs.save(model, tmp / "final", config=final_cfg, metrics=after, files=files)
    report = _report(tmp, out, r) if r.data.get("report", True) else None
    return {
        "recipe": r.source,
        "name": r.data.get("name"),
        "seed": r.seed,
        "before": before,
        "after": after,
        "steps": steps,
        "out": str(out),
        "start_run": str(out / "start"),
        "final_run": str(out / "final"),
        "final_file": str(out / FINAL_FILE),
        "report": report,
        "environment": environment(),
    }


def _export_final(model, tmp: Path, cfg: dict, metrics: dict, options: dict):
    """OUT/model.bsc: the final model as one compressed file (what ``after`` measured; the
    metrics it carries leave out its own size and the latencies, which vary from run to run:
    the same recipe and seed give the same bytes)."""
    from ..container import export

    kept = {k: v for k, v in metrics.items() if not k.startswith(("file_", "latency_"))}
    return export(model, tmp / FINAL_FILE, config=cfg, metrics=kept, **options)


def _run_step(r: Recipe, i: int, kind: str, options, ctx: StepContext, tmp: Path, store):
    """Step ``i`` with epoch checkpoints under ``store``; an error names the step."""
    try:
        with epoch_checkpoints(*store.epochs(i, options)):
            return _step(kind, options, r.seed + i, ctx, tmp)
    except BrainsurgeonError as err:  # name the step that failed, with its line
        kept = (
            f" (steps[0]..steps[{i - 1}] finished and are kept in {store.root}: fix this "
            "step and rerun with --resume to continue after them)"
        ) * (i > 0)
        raise r.error(f"steps[{i}].{kind}", f"{err}{kept}") from None


def _start_point(model, data, tmp: Path, base_cfg, history, r: Recipe, files, store):
    """The start run's metrics: kept from an interrupted run, else measured and saved."""
    kept = store.load_start(tmp / "start")
    if kept is not None:
        return kept
    before = _save_start(model, data, tmp, base_cfg, history, r, files)
    store.save_start(tmp / "start")
    return before


def _save_start(model, data, tmp: Path, base_cfg, history, r: Recipe, files) -> dict[str, Any]:
    metrics = _measure(model, data, tmp)
    cfg = {**base_cfg, "history": list(history), "recipe": r.data}
    runs.save(model, tmp / "start", config=cfg, metrics=metrics, files=files)
    return metrics


def _start(r: Recipe, device, progress: bool, say):
    from ..data import load_data
    from ..models import build_model
    from ..reports.html import load_techniques

    if "load" in r.data:
        load_techniques()
        run = runs.load_run(r.data["load"], device=device)
        data = (
            load_data(r.data["data"], seed=r.seed, progress=progress)
            if "data" in r.data
            else run.data(progress=progress)
        )
        say(f"loaded {r.data['load']}")
        cfg = copy.deepcopy(run.config)
        for key in ("format", "format_version", "model", "edits", "parametrizations", "versions"):
            cfg.pop(key, None)
        cfg["history"] = [*cfg.get("history", []), {"step": "load", "parent": str(run.path)}]
        return run.model, data, cfg
    data = load_data(r.data["data"], seed=r.seed, progress=progress)
    model = build_model(
        r.data["model"], data.input_shape, data.num_classes, r.data.get("model_kwargs")
    )
    return (
        model.to(device),
        data,
        {"data": data.spec, "normalization": data.normalization, "seed": r.seed},
    )


def _step(kind: str, options, seed: int, ctx: StepContext, scratch: Path) -> dict[str, Any]:
    """Run one step through its registered kind; then evaluate it on its split and size the
    file it would export to."""
    from ..container import export
    from ..training import evaluate

    opts = step_config(kind, options, seed=seed if "seed" not in options else options["seed"])
    start = time.perf_counter()
    record: dict[str, Any] = {"step": kind, "options": options}
    record.update(STEPS.get(kind).run(ctx, opts))
    split = opts["split"] if kind == "evaluate" else "test"
    ev = evaluate(ctx.model, ctx.data, split=split)
    record.update(
        accuracy=ev["accuracy"],
        loss=ev["loss"],
        errors=ev["errors"],
        split=split,
        seconds=round(time.perf_counter() - start, 3),
    )
    path = scratch / ".step.bsc"
    record["file_bytes"] = export(ctx.model, path).file_bytes
    path.unlink()
    return record


def _brief(record: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "accuracy",
        "total_sparsity",
        "bits_per_weight",
        "epochs",
        "split",
        "weight_ratio",
        "file_bytes",
    )
    return {k: record[k] for k in keys if k in record}


def _measure(model, data, scratch: Path, export_options: dict | None = None) -> dict[str, Any]:
    """Test accuracy, the compressed file's size, counts (params, nonzeros, FLOPs), latency.

    The model is exported to a ``.bsc`` file and read back: accuracy and batch-1/64 latency
    are those of the model as it loads from the file (plain tensors, nothing re-quantized at
    each call), and ``file_bytes`` is the file's size on disk.
    """
    from ..container import export, read
    from ..metrics import measure_latency, summarize
    from ..training import evaluate

    shape = data.input_shape
    totals = summarize(model, shape)["totals"]
    totals.pop("flop_counter_flops", None)
    path = scratch / ".measure.bsc"
    exported = export(model, path, **(export_options or {}))
    loaded = read(path).model
    path.unlink()
    lat = measure_latency(loaded, shape, min_run_time=0.1)
    ev = evaluate(loaded, data, split="test")
    return {
        "accuracy": ev["accuracy"],
        "loss": ev["loss"],
        "errors": ev["errors"],
        **totals,
        "file_bytes": exported.file_bytes,
        "fp32_bytes": exported.fp32_bytes,
        "file_ratio": exported.ratio,
        "latency_b1_ms": lat["batch_1_ms"],
        "latency_b64_ms": lat["batch_64_ms"],
    }


def _report(tmp: Path, out: Path, r: Recipe) -> str:
    from ..reports.html import build_report

    final = runs.load_run(tmp / "final")
    start = runs.load_run(tmp / "start") if (tmp / "start").exists() else None
    final.path = out / "final"
    page = build_report(
        final,
        before=start,
        plots_dir=tmp / "final",
        sram=r.data.get("sram"),
        title=f"brainsurgeon recipe {r.data.get('name', r.source)}",
    )
    write_text(tmp / "report.html", page)
    return str(out / "report.html")
