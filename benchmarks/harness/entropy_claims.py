"""The papers' entropy claims, checked on per-method summaries of entropy curves, and the curves' plot: shared by the
sweeps of `entropy_dynamics.py` and `regime.py`.

A run is a dict with `method`, `entropy` (one value per step), `accuracy_curve` ((step, accuracy) pairs),
`final_accuracy`, `clip_region`, `seconds`. `per_method` reduces runs to (mean, spread) per summary number,
`check_claims` gives each claim a verdict (`stats.verdict`: the difference against twice its standard error), `plot`
draws the entropy and held-out accuracy curves.

Example:
    >>> round(end_value([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]), 2)  # the mean of the last 4 steps
    0.45
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

from . import stats


def end_value(values: list[float]) -> float:
    """The end of a curve: the mean of its last eighth (4 steps at least), which damps step-to-step noise."""
    tail = max(4, len(values) // 8)
    return statistics.fmean(values[-tail:])


def end_standard_error(runs: list[dict[str, Any]]) -> float:
    """Standard error of a method's mean end entropy: the larger of the between-seed spread and the step-to-step
    noise inside the averaged tail, so that a single seed is not mistaken for a noiseless measurement."""
    tails = [r["entropy"][-max(4, len(r["entropy"]) // 8) :] for r in runs]
    within = math.sqrt(statistics.fmean(statistics.variance(t) / len(t) for t in tails) / len(runs))
    between = statistics.stdev(end_value(r["entropy"]) for r in runs) / math.sqrt(len(runs)) if len(runs) > 1 else 0
    return max(within, between)


def swing_standard_error(runs: list[dict[str, Any]]) -> float:
    """Standard error of a method's mean swing: between seeds, or within the one run's step changes."""
    if len(runs) > 1:
        return statistics.stdev(swing(r["entropy"]) for r in runs) / math.sqrt(len(runs))
    changes = [abs(b - a) for a, b in zip(runs[0]["entropy"][:-1], runs[0]["entropy"][1:], strict=True)]
    return statistics.stdev(changes) / math.sqrt(len(changes)) if len(changes) > 1 else 0.0


def swing(values: list[float]) -> float:
    """Mean absolute change of entropy between consecutive steps."""
    return (
        statistics.fmean(abs(b - a) for a, b in zip(values[:-1], values[1:], strict=True)) if len(values) > 1 else 0.0
    )


def per_method(results: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per method: (mean, std over seeds) of each summary number."""
    summary = {}
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        numbers = {
            "start": [r["entropy"][0] for r in runs],
            "min": [min(r["entropy"]) for r in runs],
            "end": [end_value(r["entropy"]) for r in runs],
            "swing": [swing(r["entropy"]) for r in runs],
            "accuracy_start": [r["accuracy_curve"][0][1] for r in runs],
            "accuracy": [r["final_accuracy"] for r in runs],
            "clip": [statistics.fmean(r["clip_region"]) if r["clip_region"] else float("nan") for r in runs],
            "seconds": [r["seconds"] for r in runs],
            "seeds": [float(len(runs))] * len(runs),
        }
        summary[method] = {
            name: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for name, v in numbers.items()
        }
        summary[method]["end_se"] = (end_standard_error(runs), 0.0)
        summary[method]["swing_se"] = (swing_standard_error(runs), 0.0)
    return summary


def check_claims(summary: dict[str, dict[str, tuple[float, float]]]) -> list[tuple[str, str, str]]:
    """The papers' qualitative claims, each with a verdict on the seed means: `HOLDS` or `FAILS` when the difference
    exceeds twice its standard error, `UNRESOLVED` otherwise. Claims whose methods were not run are left out."""

    def below(a: str, b: str, name: str = "end") -> str:
        """Whether `name` of `a` is below `b`'s: the verdict on `b - a` with its standard error."""
        se = math.hypot(summary[a][f"{name}_se"][0], summary[b][f"{name}_se"][0])
        return stats.verdict((summary[b][name][0] - summary[a][name][0], se), expected_sign=1)

    verdict = stats.combine

    def fmt(method: str, name: str = "end") -> str:
        return f"{method}: {summary[method][name][0]:.3f} ± {summary[method][name + '_se'][0]:.3f}"

    claims = []
    beta1_order = ["CE-GPPO (0, 1)", "CE-GPPO (0.5, 1)", "CE-GPPO (0.75, 1)", "GPPO (1, 1)"]
    if all(m in summary for m in beta1_order):
        checks = [below(b, a) for a, b in zip(beta1_order[:-1], beta1_order[1:], strict=True)]
        claims.append(
            (
                "entropy falls faster with larger beta1 (end entropy decreasing in beta1 = 0, 0.5, 0.75, 1 at "
                "beta2 = 1)",
                verdict(checks),
                ", ".join(fmt(m) for m in beta1_order),
            )
        )
    if "CE-GPPO (1, 0.5)" in summary and "GPPO (1, 1)" in summary:
        claims.append(
            (
                "entropy falls slower with larger beta2 (end entropy of (1, 0.5) below (1, 1))",
                verdict([below("CE-GPPO (1, 0.5)", "GPPO (1, 1)")]),
                f"{fmt('CE-GPPO (1, 0.5)')}, {fmt('GPPO (1, 1)')}",
            )
        )
    for baseline in ("GRPO", "DAPO"):
        if baseline in summary and "CE-GPPO (0.5, 1)" in summary:
            claims.append(
                (
                    f"CE-GPPO (0.5, 1) ends with more entropy than {baseline} (the papers: {baseline} collapses, "
                    "CE-GPPO holds); whether anything collapses is in the table",
                    verdict([below(baseline, "CE-GPPO (0.5, 1)")]),
                    f"start {summary[baseline]['start'][0]:.3f}; end {fmt(baseline)}, {fmt('CE-GPPO (0.5, 1)')}",
                )
            )
    if "DAPO" in summary and "DAPO + ERC" in summary:
        claims.append(
            (
                "ERC narrows entropy swings (mean absolute step-to-step entropy change of DAPO + ERC below DAPO's)",
                verdict([below("DAPO + ERC", "DAPO", "swing")]),
                f"{fmt('DAPO', 'swing')}, {fmt('DAPO + ERC', 'swing')}",
            )
        )
    return claims


def plot(results: list[dict[str, Any]], methods: list[str], path: str, opts: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_h, ax_a) = plt.subplots(1, 2, figsize=(14, 5.5))
    colors = plt.get_cmap("tab10")
    for i, method in enumerate(methods):
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        # One point per rollout batch (the mean of its updates): step-level entropy mostly follows the batch's prompts.
        block = opts.steps_per_generation
        length = min(len(r["entropy"]) for r in runs) // block * block
        mean_h = [
            statistics.fmean(r["entropy"][t] for r in runs for t in range(b, b + block))
            for b in range(0, length, block)
        ]
        style = "--" if i >= 10 else "-"
        ax_h.plot(range(block, length + 1, block), mean_h, style, marker="o", ms=3, color=colors(i % 10), label=method)
        points = min(len(r["accuracy_curve"]) for r in runs)
        steps = [runs[0]["accuracy_curve"][j][0] for j in range(points)]
        mean_a = [statistics.fmean(r["accuracy_curve"][j][1] for r in runs) for j in range(points)]
        ax_a.plot(steps, mean_a, style, marker="o", ms=3, color=colors(i % 10), label=method, lw=1.5)
    ax_h.set(
        xlabel="optimizer step",
        ylabel="entropy (nats, T = 1)",
        title="Policy entropy (mean over seeds and rollout batch)",
    )
    ax_a.set(
        xlabel="optimizer step",
        ylabel=f"held-out accuracy (T = {opts.eval_temperature})",
        title=f"Held-out accuracy (avg@{opts.eval_k} at start and end, avg@1 between)",
    )
    ax_h.legend(fontsize=8)
    for ax in (ax_h, ax_a):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
