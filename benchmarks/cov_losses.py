"""Clip-Cov and KL-Cov (arXiv 2505.22617, verl's `clip_cov` / `kl_cov`) beside CE-GPPO on the quickstart.

Each run is `ce-gppo train --config configs/quickstart.yaml` in its own process with `--loss_type ARM` and one seed,
one run at a time; Clip-Cov and KL-Cov take verl's defaults (`clip_cov_ratio` 2e-4, band (1, 5); `kl_cov_ratio` 2e-4,
`ppo_kl_coef` 1) and the quickstart's clip width (epsilon 0.2). Each finished run is saved as JSON under `--out-dir`
and reused, so an interrupted study resumes where it stopped. The script prints a Markdown table (means over seeds,
+- standard error) and writes a plot of the reward and entropy curves.

    python benchmarks/cov_losses.py                                  # 3 seeds x {ce_gppo, clip_cov, kl_cov}
    python benchmarks/cov_losses.py --seeds 1 --max-steps 8          # a quick look
    python benchmarks/cov_losses.py --report-only                    # the table and plot from saved runs
    python benchmarks/cov_losses.py --arms ce_gppo clip_cov kl_cov dapo kl_cov_no_penalty   # with the controls
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# arm -> loss_type and overrides. The two controls remove what each method adds: `dapo` is Clip-Cov's PPO surrogate
# without the detached tokens, `kl_cov_no_penalty` is KL-Cov's unclipped surrogate without the |log r| penalty.
ARM_FIELDS = {
    "ce_gppo": ("--loss_type", "ce_gppo"),
    "clip_cov": ("--loss_type", "clip_cov"),
    "kl_cov": ("--loss_type", "kl_cov"),
    "dapo": ("--loss_type", "dapo"),
    "kl_cov_no_penalty": ("--loss_type", "kl_cov", "--ppo_kl_coef", "0.0"),
}
ARMS = tuple(ARM_FIELDS)
METRICS = ("reward", "entropy", "clip_ratio/region_mean", "clip_cov/selected_mean", "kl_cov/selected_mean")


def run_path(out_dir: Path, arm: str, seed: int, max_steps: int) -> Path:
    return out_dir / f"{arm}_seed{seed}_steps{max_steps}.json"


def run(arm: str, seed: int, out_dir: Path, max_steps: int, logging_steps: int) -> dict:
    output = out_dir / f"{arm}_seed{seed}"
    command = [sys.executable, "-m", "ce_gppo_trl.cli", "train", "--config", str(ROOT / "configs" / "quickstart.yaml")]
    command += ["--output_dir", str(output), "--seed", str(seed), "--logging_steps", str(logging_steps)]
    command += ["--save_strategy", "no", "--max_steps", str(max_steps), *ARM_FIELDS[arm]]
    start = time.perf_counter()
    with open(f"{output}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    rows = [entry for entry in history if "reward" in entry]
    result = {"arm": arm, "seed": seed, "wall_s": time.perf_counter() - start, "steps": [e["step"] for e in rows]}
    result.update({name: [e[name] for e in rows] for name in METRICS if name in rows[0]})
    return result


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{statistics.fmean(values):.3f}"
    return f"{statistics.fmean(values):.3f} +- {statistics.stdev(values) / math.sqrt(len(values)):.3f}"


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
        lines.append(
            f"| {arm} | {len(arm_runs)} | {per_seed('reward', early)} | {per_seed('reward', late)} | "
            f"{per_seed('entropy', early)} | {per_seed('entropy', late)} | {per_seed('entropy', slice(-1, None))} | "
            f"{per_seed('clip_ratio/region_mean')} | {per_seed(f'{ARM_FIELDS[arm][1]}/selected_mean')} | "
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
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for seed in range(args.seeds):
        for arm in args.arms:  # arms alternate per seed, so load on the shared machine falls on all of them
            path = run_path(args.out_dir, arm, seed, args.max_steps)
            if not path.exists() and not args.report_only:
                path.write_text(json.dumps(run(arm, seed, args.out_dir, args.max_steps, args.logging_steps)))
            if path.exists():
                runs[arm].append(json.loads(path.read_text()))
    print(report(runs))
    if args.plot and any(runs.values()):
        plot(runs, args.plot)
    return runs


if __name__ == "__main__":
    main()
