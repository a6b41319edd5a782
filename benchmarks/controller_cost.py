"""What measuring the plant costs (issue 31): seconds per optimizer step of a recipe with the entropy controller
under the fixed-gain PI law (no measurement) and under the measured-gain law measuring every 1, 2 or 4 steps.

    python -m benchmarks.controller_cost [--config quickstart] [--steps 16] [--repeats 2] [overrides ...]

Each arm trains `--steps` steps through `cli.build_trainer` (the path `ce-gppo train` runs), in the order
pi, measured/1, measured/2, measured/4, repeated `--repeats` times (alternated, so that a change of load hits every
arm alike); prints the median seconds per step of each arm and its cost over the PI law, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from ce_gppo_trl.cli import build_trainer, parse_train_args

ARMS = {
    "pi": ["--entropy_controller_law", "pi"],
    "measured/1": ["--entropy_controller_measure_steps", "1"],
    "measured/2": ["--entropy_controller_measure_steps", "2"],
    "measured/4": ["--entropy_controller_measure_steps", "4"],
}


def seconds_per_step(config: str, steps: int, arm: list[str], overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        argv = ["--config", config, "--max_steps", str(steps), "--save_strategy", "no", "--output_dir", out]
        argv += ["--entropy_controller", "true", "--entropy_controller_target", "1.0", *arm, *overrides]
        trainer = build_trainer(*parse_train_args(argv))
        start = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    known, overrides = parser.parse_known_args()
    times: dict[str, list[float]] = {name: [] for name in ARMS}
    for _ in range(known.repeats):
        for name, arm in ARMS.items():
            times[name].append(seconds_per_step(known.config, known.steps, arm, overrides))
    base = statistics.median(times["pi"])
    print(
        json.dumps(
            {
                "config": known.config,
                "steps": known.steps,
                "threads": torch.get_num_threads(),
                "seconds_per_step": {name: round(statistics.median(t), 4) for name, t in times.items()},
                "cost_over_pi": {name: round(statistics.median(t) / base - 1, 3) for name, t in times.items()},
                "runs": times,
            }
        )
    )


if __name__ == "__main__":
    main()
