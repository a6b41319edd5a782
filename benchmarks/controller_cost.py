"""What measuring the plant costs (issue 31): seconds per optimizer step of a recipe with the entropy controller
under the fixed-gain PI law (no measurement) and under the measured-gain law measuring every 1, 2 or 4 steps.

    python -m benchmarks.controller_cost [--config quickstart] [--steps 16] [--repeats 2] [--arms pi measured/1 ...]
        [overrides ...]

Each arm trains `--steps` steps through `cli.build_trainer` (the path `ce-gppo train` runs), in the order
pi, measured/1, measured/2, measured/4, repeated `--repeats` times (alternated, so that a change of load hits every
arm alike); prints the median seconds per step of each arm and its cost over the PI law, as JSON. The measured
arms measure each of the first 8 steps (`attribution.GAIN_METER_WARMUP_STEPS`) whatever their interval, so the cost
of measuring every 2 or 4 steps shows only in runs well beyond 8 steps; `measured/1` is the cost of one measurement
per step at any length.
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
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="pi is always run")
    known, overrides = parser.parse_known_args()
    arms = ["pi", *(name for name in known.arms if name != "pi")]
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(known.repeats):
        for name in arms:
            times[name].append(seconds_per_step(known.config, known.steps, ARMS[name], overrides))
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
