"""Entropy attribution (`entropy_attribution_steps`): does `entropy_attribution/predicted` predict the realised
entropy change, what does it cost, and which token group makes larger beta1 raise entropy (RESULTS section 4)?

Three measurements, each run saved under `--out-dir` and reused on a rerun:

1. **Check**: one CE-GPPO (0.5, 1) run (dual clip 10) with the attribution on every step: Pearson r, least-squares
   slope and sign agreement of `entropy_attribution/predicted` against `entropy_attribution/realised` over its updates
   (and, for contrast, of the tabular `entropy_dynamics/predicted_delta`); the parts' sum against the prediction.
2. **Cost**: the same run with the attribution off: seconds per optimizer step, on against off.
3. **beta1**: paired runs at `ce_gppo_beta1` 0 and 1 (same seed: the same first rollout batch; its first update is
   on-policy and identical, the next ones differ only by beta1), attribution on: per seed, each part and the realised
   change summed over the run's updates; the paired difference (beta1 1 minus 0), mean ± SE over seeds.

Task: by default the regime testbed of `regime.py` (built once under `--model-dir`); `--model` takes any model the
`ce-gppo train` recipes take, run through `ce_gppo_trl.cli` with `--config` (default: the quickstart for
`builtin:toy`, `configs/SmolLM2-135M-Instruct/ce_gppo_cpu.yaml` otherwise) and the attribution on. The testbed
runs are built as `regime.py`'s sweep builds them (`benchmarks.harness.grid.build`), in bf16 autocast on the CPU,
the precision of the recorded figures (RESULTS sections 4 and 14); `--float32` trains them in float32.

    python -m benchmarks.attribution                       # the testbed: check, cost, beta1 over 5 seeds
    python -m benchmarks.attribution --model builtin:toy --steps 16 --beta1-seeds 0
    python -m benchmarks.attribution --model builtin:smollm2-135m-instruct --steps 24 --beta1-seeds 0 --no-cost
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from typing import Any

from . import regime
from .harness import grid, stats
from .harness.arms import ARMS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TESTBED = "testbed"
PREFIX = "entropy_attribution/"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=TESTBED, help="'testbed' (default) or a model for ce-gppo train")
    parser.add_argument("--config", help="recipe for --model (default: quickstart for builtin:toy, else SmolLM2's)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of the check run")
    parser.add_argument("--beta1-seeds", type=int, default=5, help="seeds of the beta1 pairs (0: skip)")
    parser.add_argument("--beta1-steps", type=int, default=8, help="steps of each beta1 run (8: one rollout batch)")
    parser.add_argument(
        "--beta1-warmup-steps", type=int, help="testbed: lr warm-up of the beta1 runs (default: regime's 32)"
    )
    parser.add_argument("--no-cost", action="store_true", help="skip the run with the attribution off")
    parser.add_argument(
        "--float32", action="store_true", help="testbed: float32 (default: bf16 autocast, as recorded)"
    )
    parser.add_argument("--model-dir", default=os.path.join("outputs", "regime-testbed"), help="testbed directory")
    parser.add_argument("--out-dir", default=os.path.join("outputs", "attribution"))
    parser.add_argument("--json", default=os.path.join(HERE, "attribution.json"), help="'' to skip")
    parser.add_argument("--plot", default=os.path.join(HERE, "attribution.png"), help="'' to skip")
    return parser.parse_args(argv)


def testbed_opts(opts: argparse.Namespace, steps: int, warmup_steps: int | None = None) -> argparse.Namespace:
    study = regime.parse_args(["--model-dir", opts.model_dir, "--out-dir", opts.out_dir, "--steps", str(steps)])
    study.micro_batches = 0
    if warmup_steps is not None:
        study.warmup_steps = warmup_steps
    return study


def run_testbed(opts: argparse.Namespace, name: str, fields: dict[str, Any], seed: int, steps: int) -> dict:
    warmup = fields.pop("warmup_steps", None)
    study = testbed_opts(opts, steps, warmup)
    train, _ = regime.task_data(study, seed)
    fields = {**regime.run_fields(study), "bf16": not opts.float32, **fields}
    run = {
        "seed": seed,
        "output_dir": os.path.join(study.out_dir, "trainer", f"{name}-{seed}"),
        "train_dataset": train,
    }
    trainer = grid.build(regime.testbed_plant(study), fields, model_dir=opts.model_dir, **run)
    regime.quiet(trainer)
    return timed_train(trainer)


def run_recipe(opts: argparse.Namespace, name: str, fields: dict[str, Any], seed: int, steps: int) -> dict:
    from ce_gppo_trl import cli

    config = opts.config or (
        os.path.join(ROOT, "configs", "quickstart.yaml")
        if opts.model == "builtin:toy"
        else os.path.join(ROOT, "configs", "SmolLM2-135M-Instruct", "ce_gppo_cpu.yaml")
    )
    argv = ["--config", config, "--model_name_or_path", opts.model, "--max_steps", str(steps), "--seed", str(seed)]
    argv += ["--output_dir", os.path.join(opts.out_dir, "trainer", name), "--logging_steps", "1"]
    argv += ["--save_strategy", "no", "--disable_tqdm", "true"]
    for key, value in fields.items():
        argv += [f"--{key}", str(value)]
    trainer = cli.build_trainer(*cli.parse_train_args(argv))
    regime.quiet(trainer)
    return timed_train(trainer)


def timed_train(trainer: Any) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    steps = trainer.state.global_step
    updates = []
    for entry in trainer.state.log_history:
        if PREFIX + "predicted" in entry:
            update = {k.removeprefix(PREFIX): v for k, v in entry.items() if k.startswith(PREFIX)}
            update["step"] = entry["step"]
            update["tabular"] = entry.get("entropy_dynamics/predicted_delta", float("nan"))
            update["clip_region"] = entry.get("clip_ratio/region_mean", float("nan"))
            updates.append(update)
    return {"seconds": wall, "cpu_seconds": cpu, "steps": steps, "updates": updates}


def cached(opts: argparse.Namespace, name: str, fields: dict[str, Any], seed: int, steps: int) -> dict:
    path = os.path.join(opts.out_dir, "runs", f"{name}-seed{seed}-{steps}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    runner = run_testbed if opts.model == TESTBED else run_recipe
    result = runner(opts, name, fields, seed, steps)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)
    print(f"done {name} seed {seed}: {result['seconds']:.0f}s wall, {result['cpu_seconds']:.0f}s CPU", flush=True)
    return result


def method_fields(opts: argparse.Namespace, beta1: float | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = dict(ARMS["CE-GPPO (0.5, 1)"].fields) if opts.model == TESTBED else {}
    if beta1 is not None:
        fields["ce_gppo_beta1"] = beta1
    return fields


def check(updates: list[dict]) -> dict[str, Any]:
    x = [u["predicted"] for u in updates]
    y = [u["realised"] for u in updates]
    r, slope, intercept = stats.pearson_slope(x, y)
    tab = [(u["tabular"], u["realised"]) for u in updates if not math.isnan(u["tabular"])]
    r_tab, slope_tab, _ = stats.pearson_slope([a for a, _ in tab], [b for _, b in tab]) if len(tab) > 2 else (0, 0, 0)
    gap = max(abs(sum(v for k, v in u.items() if k.startswith("part/")) - u["predicted"]) for u in updates)
    return {
        "updates": len(updates),
        "pearson_r": r,
        "slope": slope,
        "intercept": intercept,
        "sign_agreement": statistics.fmean((a > 0) == (b > 0) for a, b in zip(x, y, strict=True)),
        "tabular_pearson_r": r_tab,
        "tabular_slope": slope_tab,
        "max_parts_minus_predicted": gap,
    }


def beta1_pairs(opts: argparse.Namespace) -> dict[str, Any]:
    fields = {"entropy_attribution_steps": 1}
    suffix = ""
    if opts.model == TESTBED and opts.beta1_warmup_steps is not None:
        fields["warmup_steps"], suffix = opts.beta1_warmup_steps, f"-warmup{opts.beta1_warmup_steps}"
    runs = {
        beta1: [
            cached(opts, f"beta1-{beta1:g}{suffix}", {**method_fields(opts, beta1), **fields}, s, opts.beta1_steps)
            for s in range(opts.beta1_seeds)
        ]
        for beta1 in (0.0, 1.0)
    }
    names = sorted({k for run in runs[0.0] + runs[1.0] for u in run["updates"] for k in u if k.startswith("part/")})
    out: dict[str, Any] = {"seeds": opts.beta1_seeds, "steps": opts.beta1_steps}
    out["clipped"] = {
        f"beta1_{b:g}": statistics.fmean(u.get("clip_region", math.nan) for run in runs[b] for u in run["updates"])
        for b in runs
    }
    for name in ["realised", "predicted", *names]:
        totals = {b: [sum(u.get(name, 0.0) for u in run["updates"]) for run in runs[b]] for b in runs}
        diffs = [hi - lo for hi, lo in zip(totals[1.0], totals[0.0], strict=True)]
        out[name] = {
            "beta1_0": list(stats.mean_se(totals[0.0])),
            "beta1_1": list(stats.mean_se(totals[1.0])),
            "difference": list(stats.mean_se(diffs)),
        }
    return out


def plot(updates: list[dict], numbers: dict[str, Any], path: str) -> None:
    """Predicted against realised (the check), and the stacked parts beside the realised change per update."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ce_gppo_trl.plotting import draw_entropy_attribution

    figure, (ax_check, ax_parts) = plt.subplots(1, 2, figsize=(14, 4.8))
    x = [u["predicted"] for u in updates]
    y = [u["realised"] for u in updates]
    ax_check.scatter(x, y, s=10, alpha=0.7)
    lo, hi = min(x + y), max(x + y)
    ax_check.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    ax_check.set(
        xlabel="entropy_attribution/predicted (grad H . delta_theta)",
        ylabel="entropy_attribution/realised",
        title=f"{numbers['updates']} updates: r {numbers['pearson_r']:.3f}, slope {numbers['slope']:.3f}",
    )
    ax_check.legend(fontsize="small")
    ax_check.grid(alpha=0.3)
    series = {}
    for u in updates:
        for key, value in u.items():
            if key not in ("step", "tabular", "clip_region"):
                steps, values = series.setdefault(PREFIX + key, ([], []))
                steps.append(u["step"])
                values.append(value)
    draw_entropy_attribution(ax_parts, series, title="parts of the prediction per update")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure(opts, argv)
    finally:
        torch.set_num_threads(threads)


def measure(opts: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    if opts.model == TESTBED:
        record = regime.build(testbed_opts(opts, opts.steps))
        print(f"testbed {opts.model_dir}: SFT greedy {record['accuracy_greedy']:.2f}", flush=True)
    on = cached(opts, "check-on", {**method_fields(opts), "entropy_attribution_steps": 1}, 0, opts.steps)
    report: dict[str, Any] = {"command": shlex.join(["python", "benchmarks/attribution.py", *argv])}
    report["check"] = check(on["updates"])
    report["cost"] = {"on_seconds_per_step": on["seconds"] / on["steps"]}
    if not opts.no_cost:
        off = cached(opts, "check-off", method_fields(opts), 0, opts.steps)
        report["cost"]["off_seconds_per_step"] = off["seconds"] / off["steps"]
        report["cost"]["ratio"] = on["seconds"] / off["seconds"]
    if opts.beta1_seeds:
        report["beta1"] = beta1_pairs(opts)
    print(json.dumps(report, indent=1))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({**report, "updates": on["updates"]}, f, indent=1)
    if opts.plot:
        plot(on["updates"], report["check"], opts.plot)
    return report


if __name__ == "__main__":
    main()
