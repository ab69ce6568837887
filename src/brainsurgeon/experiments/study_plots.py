"""Plots and the markdown summary of the OBD-SD study (from the ``study.json`` payload)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..reports.plots import counts_grid, histogram_grid, line_plot, scatter


def shown_rounds(n: int) -> list[int]:
    """First, quartiles and last round (1-based, unique)."""
    return sorted({1, max(1, round(n / 4)), max(1, round(n / 2)), max(1, round(3 * n / 4)), n})


def plot_study(payload: dict[str, Any], out: Path) -> list[Path]:
    """Every figure of an OBD-SD study: accuracy curves, per-criterion histograms, and the
    per-sample statistics of the trained model."""
    paths = _accuracy_curves(payload, out)
    for c, r in payload["criteria"].items():
        paths += _histograms(c, r["rounds"], out)
    return paths + _trained_plots(payload["trained_model"], out)


def _curve(crits: dict[str, Any], x: str, y: str) -> dict[str, dict[str, Any]]:
    return {
        c: {"x": [p[x] for p in r["rounds"]], "mean": [p[y] for p in r["rounds"]], "std": None}
        for c, r in crits.items()
    }


def _accuracy_curves(payload: dict[str, Any], out: Path) -> list[Path]:
    crits, base = payload["criteria"], payload["baseline"]["accuracy"]
    return [
        line_plot(
            out / "accuracy_per_round.png",
            _curve(crits, "round", "accuracy"),
            xlabel="prune round (fine-tuned after each)",
            ylabel="test accuracy",
            title="Accuracy per round per criterion",
            reference=base,
        ),
        line_plot(
            out / "accuracy_before_finetune.png",
            _curve(crits, "target", "accuracy_pruned"),
            xlabel="sparsity",
            ylabel="test accuracy right after pruning",
            title="Accuracy right after each prune step",
            reference=base,
        ),
    ]


def _histograms(c: str, rounds: list[dict[str, Any]], out: Path) -> list[Path]:
    """|damage| and weight histograms of the unpruned weights at the shown rounds."""
    show = shown_rounds(len(rounds))

    def panels(key: str, label) -> dict[str, tuple]:
        return {
            label(k, rounds[k - 1][key]): (
                rounds[k - 1][key]["edges"],
                rounds[k - 1][key]["counts"],
            )
            for k in show
        }

    dmg = panels("damage_hist", lambda k, h: f"round {k}: {100 * h['below_1e-3']:.2f}% < 1e-3")
    wts = panels("weight_hist", lambda k, h: f"round {k} ({h['alive']:,} left)")
    return [
        counts_grid(
            out / f"damage_hist_{c}.png",
            dmg,
            xlabel="|predicted damage|",
            title=f"Histogram of |damage| of unpruned weights ({c})",
            logx=True,
            columns=len(show),
        ),
        counts_grid(
            out / f"weights_hist_{c}.png",
            wts,
            xlabel="weight",
            title=f"Histogram of unmasked weights ({c})",
            logy=True,
            columns=len(show),
        ),
    ]


def _trained_plots(trained: dict[str, Any], out: Path) -> list[Path]:
    panels = {
        f"{w['tensor']}{w['index']} (w={w['weight']:.3g})": w["h_per_sample"]
        for w in trained["sampled_weights"]
    }
    sc = trained["scatter"]
    return [
        histogram_grid(
            out / "second_derivative_samples.png",
            panels,
            xlabel="per-sample d2L/dw2",
            logy=True,
            columns=4,
            title="Per-sample second derivative of sampled weights",
        ),
        scatter(
            out / "sd_vs_mean.png",
            {"weights": ([abs(m) for m in sc["mean"]], sc["sd"])},
            xlabel="|mean| of per-sample damage",
            ylabel="SD of per-sample damage",
            title=f"SD vs |mean| of per-sample damage ({len(sc['mean'])} weights)",
            log=True,
        ),
    ]


def markdown(payload: dict[str, Any]) -> str:
    f = payload["findings"]
    cfg = payload["config"]
    lines = [
        "# The OBD-SD study",
        "",
        f"run `{payload['run']}`: {cfg['rounds']} rounds to sparsity "
        f"{cfg['final_sparsity']}, {cfg['finetune_epochs']} fine-tuning epoch(s) per round, "
        f"{cfg['samples']} calibration samples; unpruned test accuracy "
        f"{100 * f['baseline_accuracy']:.2f}%.",
        "",
        "| criterion | final accuracy % | mean over rounds % | rounds within 1 point |"
        " corr(predicted, measured loss increase) |",
        "|---|---|---|---|---|",
    ]
    for c, t in f["per_criterion"].items():
        corr = "-" if t["prediction_corr"] is None else f"{t['prediction_corr']:.2f}"
        lines.append(
            f"| {c} | {100 * t['final_accuracy']:.2f} | {100 * t['mean_accuracy']:.2f} "
            f"| {t['rounds_within_1pt']} | {corr} |"
        )
    lines.append("")
    if "obd_loses_to_random" in f:
        d = f["obd_minus_random"]
        lines.append(
            f"- Does OBD lose to random pruning? **{'yes' if f['obd_loses_to_random'] else 'no'}**"
            f": final accuracy OBD - random = {100 * d['final']:+.2f} points "
            f"(mean over rounds {100 * d['mean_over_rounds']:+.2f})."
        )
    if "obd_sd_fixes_it" in f:
        d = f["obd_sd_minus_obd"]
        verdict = {True: "yes", False: "no", None: "nothing to fix (OBD did not lose)"}[
            f["obd_sd_fixes_it"]
        ]
        lines.append(
            f"- Does OBD-SD fix it? **{verdict}**: final "
            f"accuracy OBD-SD - OBD = {100 * d['final']:+.2f} points (mean over rounds "
            f"{100 * d['mean_over_rounds']:+.2f})."
        )
    sc = payload["trained_model"]["scatter"]
    lines.append(
        f"- On the trained model, corr(|mean|, SD) of the per-sample damage over "
        f"{sc['weights']:,} weights: {sc['corr_abs_mean_sd']:.3f}."
    )
    lines.append(f"- Best final accuracy: {f['best_final']}.")
    return "\n".join(lines) + "\n"
