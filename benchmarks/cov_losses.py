"""Clip-Cov and KL-Cov (arXiv 2505.22617, verl's `clip_cov` / `kl_cov`) beside CE-GPPO on the quickstart.

Each run is the quickstart recipe (`configs/quickstart.yaml`) with the arm's `loss_type`
(`benchmarks.harness.arms.COVARIANCE_ARMS`) and one seed, built as `ce-gppo train` builds it (`cli.build_trainer`),
one run at a time; Clip-Cov and KL-Cov take verl's defaults (`clip_cov_ratio` 2e-4, band (1, 5); `kl_cov_ratio` 2e-4,
`ppo_kl_coef` 1) and the quickstart's clip width (epsilon 0.2). Each finished run is saved as JSON under `--out-dir`
and reused, so an interrupted study resumes where it stopped. The script prints a Markdown table (means over seeds,
+- standard error) and writes a plot of the reward and entropy curves.

    python -m benchmarks.cov_losses                                  # 3 seeds x {ce_gppo, clip_cov, kl_cov}
    python -m benchmarks.cov_losses --seeds 1 --max-steps 8          # a quick look
    python -m benchmarks.cov_losses --report-only                    # the table and plot from saved runs
    python -m benchmarks.cov_losses --arms ce_gppo clip_cov kl_cov dapo kl_cov_no_penalty   # with the controls
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from functools import partial
from pathlib import Path

from .harness import grid, stats
from .harness.arms import COVARIANCE_ARMS

ROOT = Path(__file__).resolve().parents[1]
ARMS = tuple(COVARIANCE_ARMS)
METRICS = ("reward", "entropy", "clip_ratio/region_mean", "clip_cov/selected_mean", "kl_cov/selected_mean")


def run_path(out_dir: Path, arm: str, seed: int, max_steps: int) -> Path:
    return out_dir / f"{arm}_seed{seed}_steps{max_steps}.json"


def run(out_dir: Path, max_steps: int, logging_steps: int, job: grid.Job) -> dict:
    """The quickstart recipe with the arm's loss type, built as `ce-gppo train` builds it, trained in this process."""
    fields = {"logging_steps": logging_steps, "save_strategy": "no", "max_steps": max_steps}
    fields.update(COVARIANCE_ARMS[job.arm].fields)
    output = str(out_dir / f"{job.arm}_seed{job.seed}")
    start = time.perf_counter()
    trainer = grid.build("quickstart", fields, seed=job.seed, output_dir=output)
    trainer.train()
    rows = [entry for entry in trainer.state.log_history if "reward" in entry]
    result = {
        "arm": job.arm,
        "seed": job.seed,
        "wall_s": time.perf_counter() - start,
        "steps": [e["step"] for e in rows],
    }
    result.update({name: [e[name] for e in rows] for name in METRICS if name in rows[0]})
    return result


def mean_se(values: list[float]) -> str:
    return stats.cell(stats.mean_se(values), sep=" +- ")


def seed_means(arm_runs: list[dict], name: str, part: slice = slice(None)) -> str:
    """Mean +- standard error over seeds of each seed's mean of `name` over the logged entries `part`."""
    if name not in arm_runs[0]:
        return "-"
    return mean_se([statistics.fmean(r[name][part]) for r in arm_runs])


def report(runs: dict[str, list[dict]]) -> str:
    """Means over seeds (+- standard error) of per-seed means over the first and last quarter of the logged steps."""
    steps = next(arm_runs for arm_runs in runs.values() if arm_runs)[0]["steps"]
    quarter = max(len(steps) // 4, 1)
    early, late = slice(0, quarter), slice(len(steps) - quarter, len(steps))
    first, last = f"steps {steps[0]}-{steps[quarter - 1]}", f"steps {steps[-quarter]}-{steps[-1]}"
    lines = [
        f"| loss_type | seeds | reward, {first} | reward, {last} | entropy, {first} | entropy, {last} | "
        f"entropy, step {steps[-1]} | clip region share | tokens selected (share) | wall s (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, arm_runs in runs.items():
        if not arm_runs:
            continue
        per_seed = partial(seed_means, arm_runs)
        selected = per_seed(f"{COVARIANCE_ARMS[arm].fields['loss_type']}/selected_mean")
        lines.append(
            f"| {arm} | {len(arm_runs)} | {per_seed('reward', early)} | {per_seed('reward', late)} | "
            f"{per_seed('entropy', early)} | {per_seed('entropy', late)} | {per_seed('entropy', slice(-1, None))} | "
            f"{per_seed('clip_ratio/region_mean')} | {selected} | "
            f"{statistics.median(r['wall_s'] for r in arm_runs):.1f} |"
        )
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    colors = dict(zip(ARMS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), strict=True))
    for ax, name in zip(axes, ("reward", "entropy"), strict=True):
        for arm, arm_runs in runs.items():
            if not arm_runs:
                continue
            for r in arm_runs:
                ax.plot(r["steps"], r[name], color=colors[arm], alpha=0.25, lw=1)
            mean = [statistics.fmean(values) for values in zip(*(r[name] for r in arm_runs), strict=True)]
            ax.plot(arm_runs[0]["steps"], mean, color=colors[arm], lw=2, label=f"{arm} ({len(arm_runs)} seeds)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel({"reward": "training reward (T = 1)", "entropy": "entropy (nats)"}[name])
        ax.legend()
    fig.suptitle("Quickstart: " + ", ".join(arm for arm, arm_runs in runs.items() if arm_runs))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS[:3]))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--logging-steps", type=int, default=4)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "cov_losses")
    parser.add_argument(
        "--plot", type=lambda text: Path(text) if text else None, default=ROOT / "benchmarks" / "cov_losses.png"
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # arms alternate per seed, so load on the shared machine falls on all of them
    jobs = [grid.Job("quickstart", arm, seed) for seed in range(args.seeds) for arm in args.arms]

    def path_of(out_dir: str, job: grid.Job) -> str:
        return str(run_path(Path(out_dir), job.arm, job.seed, args.max_steps))

    if not args.report_only:
        job = functools.partial(run, args.out_dir, args.max_steps, args.logging_steps)
        grid.run_grid(jobs, job, out_dir=str(args.out_dir), path_of=path_of)
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for result in grid.load_runs(jobs, str(args.out_dir), missing_ok=True, path_of=path_of):
        runs[result["arm"]].append(result)
    print(report(runs))
    if args.plot and any(runs.values()):
        plot(runs, args.plot)
    return runs


if __name__ == "__main__":
    main()
