"""Dynamic sampling on vs off on the quickstart: training reward curve, rounds and refills, wall and CPU time.

Each run is `ce-gppo train --config configs/quickstart.yaml` in its own process, with `--dynamic_sampling false` or
`true` (`--dynamic_sampling_max_rounds 1`, the authors' setting) and one seed; arms alternate per seed. The script
prints a table and writes a plot of the reward curves.

    python benchmarks/dynamic_sampling.py                             # 4 seeds x 2 arms, 80 steps each
    python benchmarks/dynamic_sampling.py --seeds 1 --max-steps 8     # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(arm: str, seed: int, out_dir: Path, max_steps: int) -> dict:
    output = out_dir / f"ds_{arm}_seed{seed}"
    command = [sys.executable, "-m", "ce_gppo_trl.cli", "train", "--config", str(ROOT / "configs" / "quickstart.yaml")]
    command += ["--output_dir", str(output), "--seed", str(seed), "--logging_steps", "4", "--save_strategy", "no"]
    command += ["--max_steps", str(max_steps), "--dynamic_sampling", arm, "--dynamic_sampling_max_rounds", "1"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(f"{output}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    rows = [entry for entry in history if "reward" in entry]
    return {
        "arm": arm,
        "seed": seed,
        "wall_s": time.perf_counter() - start,
        "cpu_s": cpu,
        "steps": [entry["step"] for entry in rows],
        "reward": [entry["reward"] for entry in rows],
        "frac_reward_zero_std": [entry["frac_reward_zero_std"] for entry in rows],
        "rollouts": [entry for entry in history if "dynamic_sampling/rounds" in entry],
    }


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "dynamic_sampling")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "dynamic_sampling.png")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"false": [], "true": []}
    for seed in range(args.seeds):
        for arm in ("false", "true"):
            runs[arm].append(run(arm, seed, args.out_dir, args.max_steps))

    print("| dynamic_sampling | reward, first 8 steps | reward, last 20 steps (mean, sd over seeds) |", end="")
    print(" frac_reward_zero_std, last 20 steps | wall s (median) | CPU s (median) |")
    print("|---|---|---|---|---|---|")
    for arm, arm_runs in runs.items():
        first = [statistics.mean(r["reward"][:2]) for r in arm_runs]
        last = [statistics.mean(r["reward"][-5:]) for r in arm_runs]
        zero = [statistics.mean(r["frac_reward_zero_std"][-5:]) for r in arm_runs]
        spread = statistics.stdev(last) if len(last) > 1 else 0.0
        print(
            f"| {arm} | {statistics.mean(first):.3f} | {statistics.mean(last):.3f} ({spread:.3f}) | "
            f"{statistics.mean(zero):.3f} | {statistics.median(r['wall_s'] for r in arm_runs):.1f} | "
            f"{statistics.median(r['cpu_s'] for r in arm_runs):.1f} |"
        )
    rollouts = [entry for r in runs["true"] for entry in r["rollouts"]]
    totals = {
        name: sum(e[f"dynamic_sampling/{name}"] for e in rollouts) for name in ("groups_dropped", "groups_refilled")
    }
    masked = sum(e["dynamic_sampling/groups_masked"] for e in rollouts)
    extra = sum(e["dynamic_sampling/rounds"] > 0 for e in rollouts)
    print(
        f"\ndynamic sampling: {len(rollouts)} rollout batches, {extra} with an extra round; groups dropped "
        f"{totals['groups_dropped']:.0f}, refilled {totals['groups_refilled']:.0f}, masked {masked:.0f}"
    )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for (arm, arm_runs), color in zip(runs.items(), ("tab:blue", "tab:orange"), strict=True):
            for r in arm_runs:
                ax.plot(r["steps"], r["reward"], color=color, alpha=0.3, lw=1)
            mean = [statistics.mean(values) for values in zip(*(r["reward"] for r in arm_runs), strict=True)]
            ax.plot(
                arm_runs[0]["steps"], mean, color=color, lw=2, label=f"dynamic_sampling={arm} ({len(arm_runs)} seeds)"
            )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training reward (T = 1)")
        ax.set_title("Quickstart: dynamic sampling on vs off")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    return runs


if __name__ == "__main__":
    main()
