"""``brainsurgeon run``: run a YAML recipe (train or load -> prune, quantize, factorize,
distill, fine-tune, evaluate -> report) into one output folder.

The recipe is validated first; a mistake is reported with the field and its line, and nothing
is written. The folder appears only when every step has finished: OUT/start and OUT/final are
run directories (each holding the recipe.yaml that made it), OUT/result.json holds before /
after metrics and every step, OUT/report.html the report. `brainsurgeon run
OUT/final/recipe.yaml --out AGAIN` reproduces the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command, add_common, emit, say, seed_type, table

EPILOG = """\
a recipe:
  name: lenet-deep-compression
  seed: 0
  data: mnist                          # or: load: runs/lenet   (start from a run)
  model: lenet300
  steps:
    - train: {epochs: 20, lr: 0.05}
    - prune: {criterion: obd-sd, amount: 0.92, schedule: iterative, rounds: 4,
              finetune_epochs: 2}
    - quantize: {method: kmeans, bits: 5}
    - finetune: {epochs: 2}
    - evaluate: {split: test}
  report: true
step kinds (each step's options are the fields of its config):
{steps}

examples:
  brainsurgeon run recipe.yaml --out runs/recipe
  brainsurgeon run runs/recipe/final/recipe.yaml --out runs/again   # reproduce
  brainsurgeon run recipe.yaml --check                              # validate only
  brainsurgeon run recipe.yaml --out runs/recipe --resume   # after a kill: finished steps kept"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..recipes.steps import STEPS

    steps = "\n".join(f"  {name:<10} {text}" for name, text in STEPS.describe().items())
    p = add_command(
        sub,
        "run",
        "run a YAML recipe (a whole compression pipeline)",
        __doc__,
        EPILOG.replace("{steps}", steps),
    )
    p.add_argument("recipe", help="recipe file (YAML) or a shipped recipe: demo, deep-compression")
    p.add_argument(
        "--load",
        default=None,
        metavar="RUN",
        help="start from this run directory instead: the recipe's model, data and leading "
        "train steps are skipped (e.g. run deep-compression --load runs/lenet300)",
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/RECIPE-NAME)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted --out after its last finished step (same recipe)",
    )
    p.add_argument("--check", action="store_true", help="validate the recipe and stop")
    add_common(p, seed=False)
    p.add_argument("--seed", type=seed_type, default=None, help="override the recipe's seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..recipes import load_recipe, run_recipe, start_from

    recipe = load_recipe(args.recipe)
    if args.load:
        recipe = load_recipe(start_from(recipe, args.load))
    if args.check:
        steps = [kind for kind, _ in recipe.steps]
        emit(
            args,
            {"recipe": args.recipe, "valid": True, "steps": steps},
            f"{args.recipe}: valid ({' -> '.join(steps)})",
        )
        return 0
    name = recipe.data.get("name") or Path(args.recipe).stem
    out = Path(args.out or f"runs/{name}")
    result = run_recipe(
        recipe.data if args.load else args.recipe,
        out,
        device=None if args.device == "auto" else args.device,
        progress=not args.quiet,
        force=args.force,
        seed=args.seed,
        log=lambda m: say(args, m),
        resume=args.resume,
    )
    text = "\n".join(
        [
            stages_table(result),
            f"\nwrote {out} in {result['seconds']} s; the compressed file: "
            f"{result['final_file']}"
            + (f"; report: {result['report']}" if result["report"] else ""),
        ]
    )
    emit(args, result, text)
    return 0


def stages_table(result: dict) -> str:
    """One row per stage: accuracy (read back from the file) and the file's size on disk."""
    b, a = result["before"], result["after"]
    fp32 = b["fp32_bytes"]
    rows = [["start", "", 100 * b["accuracy"], b["file_bytes"], _times(fp32, b["file_bytes"])]]
    for i, step in enumerate(result["steps"]):
        acc, size = step.get("accuracy"), step.get("file_bytes")
        rows.append(
            [
                f"{i + 1}. {step['step']}",
                step.get("split", ""),
                "-" if acc is None else 100 * acc,
                "-" if size is None else size,
                _times(fp32, size),
            ]
        )
    rows.append(
        ["final (model.bsc)", "test", 100 * a["accuracy"], a["file_bytes"], fp32 / a["file_bytes"]]
    )
    return table(rows, ["stage", "split", "accuracy %", "file bytes", "x smaller than fp32"])


def _times(fp32: int, size: int | None) -> str:
    return "-" if not size else f"{fp32 / size:.1f}x"
