"""`ce-gppo plot`: training curves of one or more runs, overlaid, from their `trainer_state.json` logs.

A run directory is a Trainer `output_dir`: its own `trainer_state.json` is used, else the one of its latest
`checkpoint-*` folder. Every metric of `METRICS` that some run logged gets a panel; absent ones are skipped. A run that
logged `entropy_attribution/*` (`entropy_attribution_steps`) gets one more panel: per attributed step, the parts of
the predicted entropy change stacked as bars (`draw_entropy_attribution`), beside the realised change.
matplotlib is a dependency of the package; imported only when a plot is drawn.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
from typing import Any

from .optional import MissingDependencyError

__all__ = ["METRICS", "draw_entropy_attribution", "find_trainer_state", "load_log_history", "main", "plot_runs"]

METRICS: tuple[str, ...] = (
    "entropy",
    "reward",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "entropy_ratio/clip_low_mean",
    "entropy_ratio/clip_high_mean",
    "entropy_control/beta1",
    "entropy_control/beta2",
    "entropy_control/epsilon_low",
    "entropy_control/epsilon_high",
)
"""Logged metric names drawn, in panel order: TRL's entropy, reward and clip fractions, the ERC masked fractions
and this project's entropy-control values."""
ATTRIBUTION_PREFIX = "entropy_attribution/"


def find_trainer_state(run_dir: str) -> str:
    """Path of the `trainer_state.json` of `run_dir` (its own, else its latest checkpoint's).

    Raises:
        ValueError: `run_dir` is not a directory or holds no `trainer_state.json`.
    """
    if not os.path.isdir(run_dir):
        raise ValueError(f"run directory {run_dir!r} does not exist")
    own = os.path.join(run_dir, "trainer_state.json")
    if os.path.isfile(own):
        return own
    checkpoints = glob.glob(os.path.join(run_dir, "checkpoint-*", "trainer_state.json"))
    if not checkpoints:
        raise ValueError(
            f"run directory {run_dir!r} has no logs: no trainer_state.json in it or in a checkpoint-* folder "
            "(did the run save a checkpoint or call trainer.save_state()?)"
        )

    def step(path: str) -> int:
        match = re.search(r"checkpoint-(\d+)", path)
        return int(match.group(1)) if match else -1

    return max(checkpoints, key=step)


def load_log_history(run_dir: str) -> dict[str, tuple[list[float], list[float]]]:
    """Metric name -> (steps, values) from the run's `log_history`, for every metric of `METRICS` and every
    `entropy_attribution/*` metric it logged."""
    with open(find_trainer_state(run_dir)) as handle:
        history: list[dict[str, Any]] = json.load(handle).get("log_history", [])
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in history:
        if "step" not in entry:
            continue
        attribution = [name for name in entry if name.startswith(ATTRIBUTION_PREFIX)]
        for name in (*METRICS, *attribution):
            value = entry.get(name)
            if isinstance(value, int | float):
                steps, values = series.setdefault(name, ([], []))
                steps.append(entry["step"])
                values.append(float(value))
    if not series:
        raise ValueError(f"run directory {run_dir!r} has a trainer_state.json but none of the metrics {list(METRICS)}")
    return series


def short_labels(run_dirs: list[str]) -> list[str]:
    """One legend label per run: the last path component of each run directory, or as many trailing components as
    make the labels distinct; never a path of the machine the runs were made on.

    Example:
        >>> short_labels(["/home/me/runs/ce-gppo", "/home/me/runs/grpo"])
        ['ce-gppo', 'grpo']
        >>> short_labels(["a/seed0/run", "b/seed0/run"])
        ['a/seed0/run', 'b/seed0/run']
    """
    parts = [os.path.abspath(run_dir).strip(os.sep).split(os.sep) for run_dir in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def plot_runs(run_dirs: list[str], output: str, labels: list[str] | None = None) -> list[str]:
    """Draw the runs' curves into `output` (PNG, PDF, SVG: by extension); returns the metric names drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependencyError(
            f"ce-gppo plot needs matplotlib, which cannot be imported ({error}): pip install 'matplotlib>=3.9,<4'"
        ) from error
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} runs; give one label per run")
    labels = labels or short_labels(run_dirs)
    runs = {label: load_log_history(run_dir) for label, run_dir in zip(labels, run_dirs, strict=True)}
    drawn = [name for name in METRICS if any(name in series for series in runs.values())]
    attributed = [label for label, series in runs.items() if ATTRIBUTION_PREFIX + "predicted" in series]
    panels = len(drawn) + len(attributed)
    columns = min(3, panels)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.5 * rows), squeeze=False)
    for axis, label in zip(list(axes.flat)[len(drawn) :], attributed, strict=False):
        draw_entropy_attribution(axis, runs[label], title=f"entropy attribution: {label}")
    for axis, name in zip(axes.flat, drawn, strict=False):
        for label, series in runs.items():
            if name in series:
                steps, values = series[name]
                axis.plot(steps, values, marker="o" if len(steps) < 20 else None, label=label)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[panels:]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return drawn + [f"{ATTRIBUTION_PREFIX}* ({label})" for label in attributed]


def draw_entropy_attribution(axis: Any, series: dict[str, tuple[list[float], list[float]]], title: str = "") -> None:
    """Per attributed step, the parts `entropy_attribution/part/*` as stacked bars (positive parts up from 0,
    negative ones down), the realised entropy change as black dots and the predicted one (the parts' sum) as a line.

    `series` maps metric names to `(steps, values)`, as `load_log_history` returns them.
    """
    import matplotlib.pyplot as plt

    parts = sorted(name for name in series if name.startswith(ATTRIBUTION_PREFIX + "part/"))
    colors = plt.get_cmap("tab20")
    up: dict[float, float] = {}
    down: dict[float, float] = {}
    for i, name in enumerate(parts):
        steps, values = series[name]
        if not any(values):
            continue
        bottoms = [(up if v >= 0 else down).get(step, 0.0) for step, v in zip(steps, values, strict=True)]
        axis.bar(steps, values, bottom=bottoms, width=0.8, color=colors(i % 20), label=name.rsplit("/", 1)[-1])
        for step, v, bottom in zip(steps, values, bottoms, strict=True):
            (up if v >= 0 else down)[step] = bottom + v
    steps, values = series[ATTRIBUTION_PREFIX + "predicted"]
    axis.plot(steps, values, color="grey", lw=1, label="predicted")
    if ATTRIBUTION_PREFIX + "realised" in series:
        steps, values = series[ATTRIBUTION_PREFIX + "realised"]
        axis.plot(steps, values, "ko", ms=3, label="realised")
    axis.axhline(0, color="grey", lw=0.6)
    axis.set(title=title or "entropy attribution", xlabel="step", ylabel="entropy change (nats)")
    axis.legend(fontsize="x-small", ncol=2)
    axis.grid(alpha=0.3)


def build_parser() -> argparse.ArgumentParser:
    """The `ce-gppo plot` command line (the docs' flag table is generated from it)."""
    parser = argparse.ArgumentParser(prog="ce-gppo plot", description="Overlay training curves of runs.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Trainer output directories.")
    parser.add_argument("-o", "--output", default="training_curves.png", help="Image file to write.")
    parser.add_argument(
        "--labels", nargs="+", default=None, help="Legend label per run (default: each run directory's name)."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ce-gppo plot RUN_DIR [RUN_DIR ...] -o out.png`; returns the exit code (1 on a bad run)."""
    args = build_parser().parse_args(argv)
    try:
        drawn = plot_runs(args.run_dirs, args.output, args.labels)
    except ValueError as error:
        print(f"ce-gppo plot: {error}")
        return 1
    print(f"Wrote {args.output} ({', '.join(drawn)})")
    return 0
