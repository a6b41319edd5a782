"""A short sweep on the real model: DAPO, CE-GPPO (0.5, 1), GPPO and DAPO + ERC, `--seeds` seeds each, same steps.

Every run is the real-model recipe (`configs/SmolLM2-135M-Instruct/ce_gppo_cpu.yaml`) through `ce-gppo train`, with
only the method's fields changed; then held-out accuracy on the 256 word problems whose sums never occur in training
(`real_model.evaluate`, temperature 1). Reported per method: the entropy curve (mean over seeds per logged step) and
held-out accuracy and format with standard errors over seeds; `benchmarks/real_model_sweep.json`.

Not affordable on this project's 2-core CPU (one run is ~34 minutes there, 12 runs ~7 hours: RESULTS.md section 15);
sized for one GPU, where the 12 runs share the device `--jobs` at a time:

    python benchmarks/real_model_sweep.py --device cuda            # bf16, 4 runs at a time (unmeasured)
    python benchmarks/real_model_sweep.py --max-steps 1 --seeds 1 --num-problems 4 --samples 1  # a CPU smoke run

Finished runs and evaluations are saved under `--out-dir` and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import real_model
from .harness import grid
from .harness.arms import RECIPE_ARMS
from .harness.stats import mean_se

HERE = Path(__file__).resolve().parent
METHODS = {name: arm.fields for name, arm in RECIPE_ARMS.items()}
DEVICES = {
    "cpu": {"use_cpu": "true", "bf16": "false"},
    "cuda": {"use_cpu": "false", "bf16": "true"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=list(DEVICES), default="cpu")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), metavar="METHOD")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, help="default: the recipe's 48")
    parser.add_argument("--jobs", type=int, help="runs at a time (default: 4 on cuda, 1 on cpu)")
    parser.add_argument("--samples", type=int, default=2, help="completions per held-out problem")
    parser.add_argument("--num-problems", type=int, help="held-out problems (default: all 256)")
    parser.add_argument("--out-dir", default=str(real_model.ROOT / "outputs" / "real_model_sweep"))
    parser.add_argument("--json", default=str(HERE / "real_model_sweep.json"), help="'' to skip")
    opts = parser.parse_args(argv)
    if opts.seeds < 1:
        parser.error(f"--seeds {opts.seeds}: expected >= 1")
    opts.jobs = opts.jobs or (4 if opts.device == "cuda" else 1)
    return opts


def slug(method: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in method.lower()).strip("-")


def train_command(opts: argparse.Namespace, method: str, seed: int, run_dir: Path) -> list[str]:
    """`ce-gppo train` with the recipe, the method's fields, the device's precision and the seed."""
    fields = {**METHODS[method], **DEVICES[opts.device], "seed": seed, "output_dir": str(run_dir)}
    if opts.max_steps:
        fields["max_steps"] = opts.max_steps
    command = ["ce-gppo", "train", "--config", real_model.RECIPE]
    for key, value in fields.items():
        command += [f"--{key}", str(value)]
    return command


def recipe_completion_length() -> int:
    """The recipe's `max_completion_length`: the held-out evaluation samples as many tokens as training."""
    import yaml

    return yaml.safe_load((real_model.ROOT / real_model.RECIPE).read_text())["max_completion_length"]


def run_one(opts: argparse.Namespace, method: str, seed: int) -> dict:
    out = Path(opts.out_dir) / f"{slug(method)}-seed{seed}"
    out.mkdir(parents=True, exist_ok=True)

    def train() -> dict:
        command = train_command(opts, method, seed, out / "run")
        start = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        with open(out / "train.log", "w") as log:
            subprocess.run(command, check=True, cwd=real_model.ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        history = json.loads((out / "run" / "trainer_state.json").read_text())["log_history"]
        entropy = [(e["step"], e["entropy"]) for e in history if "entropy" in e]
        return {"command": " ".join(command), "minutes": (time.perf_counter() - start) / 60, "entropy": entropy}

    run = real_model.cached(out / "train.json", train)
    length = recipe_completion_length()
    evaluation = real_model.cached(
        out / "eval.json", lambda: real_model.evaluate(str(out / "run"), opts.num_problems, opts.samples, length, 1234)
    )
    return {"method": method, "seed": seed, **run, "heldout": evaluation}


def run_job(opts: argparse.Namespace, job: grid.Job) -> dict:
    return run_one(opts, job.arm, job.seed)


def summarize(runs: list[dict], methods: list[str]) -> dict:
    summary = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        steps = sorted({step for r in mine for step, _ in r["entropy"]})
        curve = [[step, *mean_se([value for r in mine for s, value in r["entropy"] if s == step])] for step in steps]
        summary[method] = {
            "seeds": len(mine),
            "heldout_accuracy": list(mean_se([r["heldout"]["accuracy"] for r in mine])),
            "heldout_format": list(mean_se([r["heldout"]["format"] for r in mine])),
            "entropy_end": list(mean_se([r["entropy"][-1][1] for r in mine])),
            "entropy_curve": curve,
            "train_minutes": sum(r["minutes"] for r in mine) / len(mine),
        }
    return summary


def main(argv: list[str] | None = None) -> dict:
    opts = parse_args(argv)
    jobs = [grid.Job("", m, s) for s in range(opts.seeds) for m in opts.methods]
    grid.run_grid(jobs, functools.partial(run_job, opts), out_dir=opts.out_dir, workers=opts.jobs)
    runs = grid.load_runs(jobs, opts.out_dir)
    summary = {"device": opts.device, "methods": summarize(runs, opts.methods), "argv": argv or sys.argv[1:]}
    for method, s in summary["methods"].items():
        acc, se = s["heldout_accuracy"]
        print(f"{method}: held-out {acc:.3f} ± {se:.3f}, entropy end {s['entropy_end'][0]:.3f}, {s['seeds']} seeds")
    if opts.json:
        Path(opts.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
