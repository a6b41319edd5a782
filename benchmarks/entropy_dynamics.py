"""A small-scale reproduction of the papers' entropy dynamics: GRPO, DAPO, GPPO, CE-GPPO, ERC and entropy control.

A toy Llama warm-started by SFT on generated single-digit addition (`ce_gppo_trl.toy.build_toy_model` with its
defaults, built once and reused; greedy accuracy 1.00, sampled at T = 1 0.37, so RL has something to sharpen) is
trained by RL with each method below, for several seeds and the same budget. Per method the script reports the
policy entropy (TRL's `entropy`, the mean next-token entropy of the completion tokens at the sampling temperature
1.0, logged every step) at the start, its minimum and its end, the held-out accuracy avg@k at the end, plots the
entropy and held-out accuracy curves, and checks the papers' qualitative claims on the numbers. The held-out
problems are a fixed subset (`--eval-problems`, 20 by default) of the 100 distinct single-digit problems, never
trained on.

Every run is off-policy after its first update: one rollout batch (`--prompts-per-rollout` prompts x
`--num-generations` completions) feeds `--steps-per-generation` optimizer updates, as in the papers' 8 updates per
rollout batch, so the clip regions, CE-GPPO's gradient-preserving terms and ERC act.

Each run is built as `ce-gppo train` builds it (`benchmarks.harness.grid.build`: the quickstart recipe, the toy
plant's CPU fields, this study's budget and the method's fields); GRPO and DAPO run TRL's own loss (`loss_type`
`grpo` / `dapo`) inside `CEGPPOTrainer`. Precision: bf16 autocast on the CPU (`bf16: true`), the precision the
recorded figures of RESULTS section 3 were made with; `--float32` trains in float32, the recipes' precision.

    python -m benchmarks.entropy_dynamics --jobs 2              # all methods, 3 seeds, 2 worker processes
    python -m benchmarks.entropy_dynamics --methods GRPO DAPO --seeds 1 --steps 20 --out-dir /tmp/ed

Runs already saved under `--out-dir/runs` are reused, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shlex
import sys
import time
from typing import Any

from .harness import grid, heldout, micro
from .harness.arms import ARMS
from .harness.entropy_claims import check_claims, end_value, per_method, plot  # noqa: F401 - also this study's API
from .harness.plants import PLANTS
from .harness.results import write_results
from .harness.stats import FAILS, HOLDS, UNRESOLVED  # noqa: F401 - the verdicts, as this study's tests read them

METHODS: dict[str, dict[str, Any]] = {name: arm.fields for name, arm in list(ARMS.items())[:10]}
"""Method name -> config fields."""
PLANT = dataclasses.replace(PLANTS["toy"], build=None, data=None)
"""The toy plant's CPU fields and score; the model (`--toy-dir`) and the data (`task_data`) are this study's."""
RESULTS_START = "<!-- entropy_dynamics:start -->"
RESULTS_END = "<!-- entropy_dynamics:end -->"
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default 40)")
    parser.add_argument("--prompts-per-rollout", type=int, default=16)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--steps-per-generation", type=int, default=4, help="optimizer updates per rollout batch")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--max-completion-length", type=int, default=6)
    parser.add_argument(
        "--eval-problems", type=int, default=20, help="distinct held-out problems (excluded from training)"
    )
    parser.add_argument("--eval-every", type=int, default=8, help="steps between held-out accuracy points")
    parser.add_argument("--eval-k", type=int, default=4, help="samples per problem for the final avg@k")
    parser.add_argument("--eval-temperature", type=float, default=0.6, help="papers: 0.6 (top_p 0.95, not used)")
    parser.add_argument(
        "--float32", action="store_true", help="train in float32 (default: bf16 autocast, as the recorded figures)"
    )
    parser.add_argument("--controller-target-ratio", type=float, nargs=2, default=(1.0, 0.6), metavar=("START", "END"))
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (1 torch thread each); 1: this process")
    parser.add_argument("--toy-dir", default=os.path.join("outputs", "bench-toy-9"), help="toy model (cached)")
    parser.add_argument("--toy-max-operand", type=int, default=9, help="operands of the toy task, 0..N")
    parser.add_argument("--toy-sft-steps", type=int, default=200)
    parser.add_argument("--out-dir", default=os.path.join("outputs", "entropy_dynamics"))
    parser.add_argument("--plot", default=os.path.join(HERE, "entropy_dynamics.png"))
    parser.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"), help="'' to skip")
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: report the runs already saved in --out-dir"
    )
    return parser.parse_args(argv)


# Data.


def task_data(opts: argparse.Namespace, seed: int) -> tuple[Any, Any]:
    """(train, held-out): `--eval-problems` distinct held-out problems, the same for every run, never in training.

    With single-digit operands there are only 100 distinct problems, so the held-out set is a fixed subset of them
    (the first distinct prompts of a seeded stream) and training draws from the rest."""
    from ce_gppo_trl.toy import make_arithmetic_dataset

    stream = make_arithmetic_dataset(50 * opts.eval_problems, seed=10_000, max_operand=opts.toy_max_operand)
    first: dict[str, int] = {}
    for index, prompt in enumerate(stream["prompt"]):
        first.setdefault(prompt, index)
    if len(first) < opts.eval_problems:
        raise ValueError(f"only {len(first)} distinct problems for --eval-problems {opts.eval_problems}")
    held_out = stream.select(sorted(first.values())[: opts.eval_problems])
    excluded = set(held_out["prompt"])
    rollouts = math.ceil(opts.steps / opts.steps_per_generation)
    train = make_arithmetic_dataset(
        4 * rollouts * opts.prompts_per_rollout, seed=seed, max_operand=opts.toy_max_operand
    )
    train = train.filter(lambda row: row["prompt"] not in excluded)
    return train, held_out


def build_toy(opts: argparse.Namespace) -> dict[str, Any]:
    """Build the toy model once; a finished build in `--toy-dir` is reused as is (even if the builder's defaults
    have changed since, so that a resumed sweep keeps its model). Returns the build record."""
    from ce_gppo_trl.toy import BUILD_MARKER, build_toy_model

    marker = os.path.join(opts.toy_dir, BUILD_MARKER)
    if not os.path.exists(marker):
        build_toy_model(opts.toy_dir, max_operand=opts.toy_max_operand, sft_steps=opts.toy_sft_steps)
    with open(marker) as f:
        record = json.load(f)
    if record["max_operand"] != opts.toy_max_operand:
        raise ValueError(
            f"{opts.toy_dir} was built with max_operand={record['max_operand']}, not {opts.toy_max_operand}"
        )
    return record


# One run.


def avg_at_k(model: Any, tokenizer: Any, dataset: Any, k: int, temperature: float, seed: int) -> float:
    """Mean accuracy over `k` samples per problem, with its own RNG stream (training's is left untouched)."""
    return heldout.evaluate(model, tokenizer, dataset, PLANT.score, k=k, temperature=temperature, seed=seed)["avg"]


def run_fields(opts: argparse.Namespace) -> dict[str, Any]:
    """The run's precision, budget and rollout layout as `ce-gppo train` fields (beside the plant's, the method's)."""
    return {
        "bf16": not opts.float32,
        "per_device_train_batch_size": opts.prompts_per_rollout * opts.num_generations // opts.steps_per_generation,
        "steps_per_generation": opts.steps_per_generation,
        "num_generations": opts.num_generations,
        "max_completion_length": opts.max_completion_length,
        "learning_rate": opts.learning_rate,
        "lr_scheduler_type": "constant",
        "max_steps": opts.steps,
    }


def run_one(opts: argparse.Namespace, method: str, seed: int, start_entropy: float | None) -> dict[str, Any]:
    """Train `method` with `seed` and return its curves and final numbers."""
    from transformers import AutoTokenizer, TrainerCallback

    fields = METHODS[method]
    if fields.get("entropy_controller"):
        fields = {**fields, **controller_fields(opts, start_entropy)}
    tokenizer = AutoTokenizer.from_pretrained(opts.toy_dir)
    train, held_out = task_data(opts, seed)
    curve: list[tuple[int, float]] = []

    class HeldOutAccuracy(TrainerCallback):
        def evaluate(self, model: Any, step: int, k: int = 1) -> None:
            curve.append((step, avg_at_k(model, tokenizer, held_out, k, opts.eval_temperature, seed + step)))

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self.evaluate(model, 0, opts.eval_k)

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.global_step % opts.eval_every == 0 and state.global_step < state.max_steps:
                self.evaluate(model, state.global_step)

    output_dir = os.path.join(opts.out_dir, "trainer", f"{slug(method)}-{seed}")
    run = {"seed": seed, "output_dir": output_dir, "model_dir": opts.toy_dir, "train_dataset": train}
    trainer = grid.build(PLANT, {**run_fields(opts), **fields}, **run)
    trainer.add_callback(HeldOutAccuracy())
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    final = avg_at_k(trainer.model, tokenizer, held_out, opts.eval_k, opts.eval_temperature, 777 + seed)
    curve.append((opts.steps, final))
    history = trainer.state.log_history

    def series(key: str) -> list[float]:
        return [entry[key] for entry in history if key in entry and "step" in entry]

    return {
        "method": method,
        "seed": seed,
        "seconds": seconds,
        "entropy": series("entropy"),
        "reward": series("reward"),
        "clip_region": series("clip_ratio/region_mean"),
        "erc_masked": [
            low + high
            for low, high in zip(
                series("entropy_ratio/clip_low_mean"), series("entropy_ratio/clip_high_mean"), strict=True
            )
        ],
        "controller_target": series("entropy_control/target"),
        "accuracy_curve": curve,
        "final_accuracy": final,
    }


def controller_fields(opts: argparse.Namespace, start_entropy: float | None) -> dict[str, Any]:
    """Controller target: from `START x H0` to `END x H0` over the run, H0 the SFT policy's measured entropy."""
    if start_entropy is None:
        raise ValueError("the controller run needs the start entropy; run the sweep through main()")
    start, end = opts.controller_target_ratio
    return {"entropy_controller_target": start * start_entropy, "entropy_controller_target_final": end * start_entropy}


slug = grid.slug


def run_path(opts: argparse.Namespace, method: str, seed: int) -> str:
    return grid.run_path(opts.out_dir, grid.Job("", method, seed))


def run_job(opts: argparse.Namespace, start_entropy: float, job: grid.Job) -> dict[str, Any]:
    result = run_one(opts, job.arm, job.seed, start_entropy)
    print(f"{job.arm} seed {job.seed}: {result['seconds']:.0f}s, avg@{opts.eval_k} {result['final_accuracy']:.3f}")
    return result


def measure_start_entropy(opts: argparse.Namespace) -> float:
    """Mean next-token entropy of the SFT policy on its own completions (temperature 1), like TRL's `entropy`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(opts.toy_dir)
    model = AutoModelForCausalLM.from_pretrained(opts.toy_dir).eval()
    _, held_out = task_data(opts, 0)
    inputs = tokenizer(list(held_out["prompt"]), return_tensors="pt", padding=True)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=opts.max_completion_length,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
    completion = out.sequences[:, inputs["input_ids"].shape[1] :]
    mask = micro.completion_mask(completion, tokenizer.eos_token_id, tokenizer.pad_token_id)
    logits = torch.stack(out.scores, dim=1)
    entropy = -(logits.log_softmax(-1).exp() * logits.log_softmax(-1)).nan_to_num().sum(-1)
    return float((entropy * mask).sum() / mask.sum())


# Sweep, table, plot, claims.


def run_sweep(opts: argparse.Namespace) -> list[dict[str, Any]]:
    os.makedirs(os.path.join(opts.out_dir, "runs"), exist_ok=True)
    record = build_toy(opts)
    start_entropy = measure_start_entropy(opts)
    print(
        f"toy model {opts.toy_dir}: SFT held-out accuracy greedy {record['accuracy_greedy']:.2f}, sampled (T=1) "
        f"{record['accuracy_sampled']:.2f}; start entropy {start_entropy:.3f} nats",
        flush=True,
    )
    jobs = [grid.Job("", method, seed) for seed in range(opts.seeds) for method in opts.methods]
    if not opts.report_only:
        run = functools.partial(run_job, opts, start_entropy)
        grid.run_grid(jobs, run, out_dir=opts.out_dir, workers=opts.jobs)
    return grid.load_runs(jobs, opts.out_dir, missing_ok=opts.report_only)


def format_table(summary: dict[str, dict[str, tuple[float, float]]], opts: argparse.Namespace) -> str:
    k = opts.eval_k
    lines = [
        f"| method | entropy start | entropy min | entropy end | mean abs. step change | avg@{k} start | avg@{k} end "
        "| clipped tokens | seeds | s / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(numbers: dict[str, tuple[float, float]], name: str) -> str:
        mean, std = numbers[name]
        return "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"

    for method, s in summary.items():
        lines.append(
            f"| {method} | {cell(s, 'start')} | {cell(s, 'min')} | {cell(s, 'end')} | {cell(s, 'swing')} | "
            f"{cell(s, 'accuracy_start')} | {cell(s, 'accuracy')} | {cell(s, 'clip')} | {s['seeds'][0]:.0f} | "
            f"{s['seconds'][0]:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    start = time.perf_counter()
    results = run_sweep(opts)
    summary = per_method(results, opts.methods)
    claims = check_claims(summary)
    table = format_table(summary, opts)
    plot(results, opts.methods, opts.plot, opts)
    command = shlex.join(["python", "-m", "benchmarks.entropy_dynamics", *argv])
    verdicts = "\n".join(f"- {verdict}: {claim}. {detail}." for claim, verdict, detail in claims)
    block = f"Command: `{command}`\n\n{table}\n\nClaims, on the seed means (± standard error):\n\n{verdicts}"
    print(block)
    print(f"\nsweep took {time.perf_counter() - start:.0f}s; plot: {opts.plot}")
    if opts.results_md:
        write_results(opts.results_md, block, RESULTS_START, RESULTS_END)
    return {"summary": summary, "claims": claims, "table": table}


if __name__ == "__main__":
    main()
