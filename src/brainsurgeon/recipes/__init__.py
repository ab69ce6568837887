"""YAML recipes: one file describes a whole pipeline; ``brainsurgeon run recipe.yaml``.

``run_recipe(path_or_dict, out_dir, *, device=None, progress=True, force=False, seed=None)``
validates the recipe (errors name the field and its line) and runs it; ``demo_recipe_path()``
is the recipe ``brainsurgeon demo`` runs. Step kinds: the registry ``STEPS``.
"""

from pathlib import Path

from .runner import RECIPE_FILE, run_recipe
from .schema import (
    STEP_KINDS,
    Recipe,
    RecipeError,
    load_recipe,
    resolve_recipe,
    shipped_recipes,
    start_from,
    validate,
)
from .steps import STEPS, StepContext, StepKind


def demo_recipe_path() -> Path:
    """The recipe shipped with the package (small MLP on the embedded digits, ~1 minute)."""
    return Path(__file__).with_name("demo.yaml")


__all__ = [
    "RECIPE_FILE",
    "STEP_KINDS",
    "Recipe",
    "RecipeError",
    "STEPS",
    "StepContext",
    "StepKind",
    "demo_recipe_path",
    "load_recipe",
    "resolve_recipe",
    "shipped_recipes",
    "start_from",
    "run_recipe",
    "validate",
]
