"""Sparsity schedules: pure ``step -> sparsity`` functions (steps count from 1).

* ``oneshot``: the final sparsity at once.
* ``iterative``: ``rounds`` prune + fine-tune rounds. ``spacing="geometric"`` removes the same
  fraction of the *remaining* weights each round, ``s_r = 1 - (1 - s_f)^(r/R)`` (Han et al.
  2015's iterative pruning); ``spacing="linear"`` adds the same amount, ``s_r = s_f r / R``.
* ``gradual``: Zhu & Gupta 2017 ("To prune, or not to prune") cubic schedule
  ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` for ``t0 <= t <= t0 + n dt``.
* ``steps``: fixed steps from ``X`` to ``Y``: ``s_r = X + (Y - X) (r - 1) / (R - 1)``, so the
  first step prunes to ``X`` and the last to ``Y``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from ..registry import Registry

SCHEDULES: Registry[Callable[..., list[float]]] = Registry("pruning schedule")
SPACINGS = ("geometric", "linear")


def oneshot(step: int, final: float) -> float:
    """``s = s_f`` at every step."""
    return final


def iterative(step: int, final: float, rounds: int, spacing: str = "geometric") -> float:
    """Geometric ``1 - (1 - s_f)^(r/R)`` or linear ``s_f r / R`` sparsity after round ``r``."""
    frac = min(max(step, 0), rounds) / rounds
    if spacing == "geometric":
        return 1.0 - (1.0 - final) ** frac
    if spacing == "linear":
        return final * frac
    raise ConfigError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")


def cubic(
    t: float, final: float, initial: float = 0.0, t0: float = 0.0, n: int = 1, dt: float = 1.0
) -> float:
    """Zhu & Gupta: ``s_f + (s_i - s_f) (1 - (t - t0)/(n dt))^3``, clamped to ``[t0, t0+n dt]``."""
    progress = min(max((t - t0) / (n * dt), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def steps(step: int, final: float, start: float, rounds: int) -> float:
    """Fixed steps: ``X + (Y - X) (r - 1) / (R - 1)`` (``Y`` when ``R == 1``)."""
    if rounds == 1:
        return final
    return start + (final - start) * (min(max(step, 1), rounds) - 1) / (rounds - 1)


@SCHEDULES.register("oneshot", "prune to the final sparsity at once")
def _oneshot_plan(final: float, rounds: int, initial: float, spacing: str) -> list[float]:
    return [oneshot(1, final)]


@SCHEDULES.register("iterative", "R rounds of prune + fine-tune, geometric or linear spacing")
def _iterative_plan(final: float, rounds: int, initial: float, spacing: str) -> list[float]:
    return [iterative(r, final, rounds, spacing) for r in range(1, rounds + 1)]


@SCHEDULES.register("gradual", "Zhu & Gupta cubic ramp from the initial to the final sparsity")
def _gradual_plan(final: float, rounds: int, initial: float, spacing: str) -> list[float]:
    return [cubic(r, final, initial, t0=0.0, n=rounds, dt=1.0) for r in range(1, rounds + 1)]


@SCHEDULES.register("steps", "fixed steps from X% (initial_amount) to Y% (amount)")
def _steps_plan(final: float, rounds: int, initial: float, spacing: str) -> list[float]:
    if not 0.0 < initial < final:
        raise ConfigError(
            f"schedule 'steps' goes from initial_amount X to amount Y and needs "
            f"0 < X < Y, got X={initial}, Y={final}; e.g. --initial-amount 0.5"
        )
    return [steps(r, final, initial, rounds) for r in range(1, rounds + 1)]


def plan(
    schedule: str, final: float, rounds: int = 1, initial: float = 0.0, spacing: str = "geometric"
) -> list[float]:
    """The sparsity after each round: ``plan("iterative", 0.9, 3) -> [0.536, 0.785, 0.9]``."""
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    targets = SCHEDULES.get(schedule)(final, rounds, initial, spacing)
    return [min(max(t, 0.0), final) for t in targets]
