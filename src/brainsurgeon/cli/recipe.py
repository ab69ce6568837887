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

from .common import add_command, add_common, emit, say, table

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
  brainsurgeon run recipe.yaml --check                              # validate only"""


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
    p.add_argument("recipe", help="recipe file (YAML)")
    p.add_argument("--out", default=None, help="output folder (default: runs/RECIPE-NAME)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--check", action="store_true", help="validate the recipe and stop")
    add_common(p, seed=False)
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..recipes import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
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
        args.recipe,
        out,
        device=None if args.device == "auto" else args.device,
        progress=not args.quiet,
        force=args.force,
        seed=args.seed,
        log=lambda m: say(args, m),
    )
    b, a = result["before"], result["after"]
    rows = [
        [label, b[key] * scale, a[key] * scale]
        for key, label, scale in [
            ("accuracy", "test accuracy %", 100),
            ("nonzeros", "nonzero params", 1),
            ("stored_bytes", "stored bytes", 1),
            ("bits_per_weight", "bits/weight", 1),
            ("nonzero_flops", "nonzero FLOPs", 1),
        ]
    ]
    text = "\n".join(
        [
            table(rows, ["", "start", "final"]),
            f"\nwrote {out} in {result['seconds']} s"
            + (f"; report: {result['report']}" if result["report"] else ""),
        ]
    )
    emit(args, result, text)
    return 0
