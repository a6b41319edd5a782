"""The papers' claims tested in their regime, at CPU scale: the testbed of `ce_gppo_trl.testbed` (sums of 5 digits
with a step-by-step scratchpad, >= 20 reasoning tokens before `\\boxed{}`, 100,000 distinct problems of which 256
are held out and never trained on) where RL raises held-out accuracy and GRPO/DAPO entropy collapses.

Three experiments, one command:

1. **The sweep**: 11 methods x `--seeds` seeds, same budget, 8 optimizer updates per rollout batch. Per method:
   entropy start / min / end, held-out avg@8 and pass@8 at T = 1 and T = 0.6 (start and end), training reward,
   clipped-token and ERC-masked fractions, wall and CPU time; the papers' claims checked on the seed means.
2. **Paired micro-experiments**: along a DAPO run, at each of `--micro-batches` rollout batches, the weights,
   optimizer state and rollout batch are frozen; from them the 8 off-policy updates are applied with CE-GPPO at
   beta1 in {0, 0.25, 0.5, 0.75, 1} (beta2 = 1) and beta2 in {0.5, 1, 1.5} (beta1 = 0.5), and the entropy change
   they cause is measured on a fixed probe set (each setting's updates through the trainer's own `compute_loss`,
   `benchmarks.harness.micro`) (completions sampled once from the frozen policy on 64 held-out
   prompts, teacher-forced). No trajectory divergence: every setting starts from the same state.
3. **Diagnostics check**: in the same run (DAPO, on this library's loss path), each update's logged
   `entropy_dynamics/predicted_delta` (the tabular logit-space direction) and `entropy_attribution/predicted`
   (`grad_theta H . delta_theta` of the real update, `entropy_attribution_steps=1`) against the realised change of
   the mean entropy over the same micro-batch's tokens (entropy before = the step's logged `entropy`; after = the
   same tokens under the updated weights, measured here independently of the library's `entropy_attribution/realised`).

The sweep's runs are built as `ce-gppo train` builds them (`benchmarks.harness.grid.build`: the quickstart recipe, the
testbed plant's fields, this study's budget and the method's fields); GRPO and DAPO run TRL's own loss (`loss_type`
`grpo` / `dapo`) inside `CEGPPOTrainer`. Precision: the sweep trains in bf16 autocast on the CPU (`bf16: true`), the
precision the recorded figures of RESULTS section 4 were made with; `--float32` trains it in float32, the recipes'
precision. The micro run is float32 either way (RESULTS section 16).

    python -m benchmarks.regime --jobs 2   # the full study, 2 worker processes; writes regime.json, PNGs, RESULTS.md
    python -m benchmarks.regime --quick    # ~2 minutes: a tiny testbed, 3 methods x 2 seeds, 2 micro batches

Runs already saved under `--out-dir/runs` are reused, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shlex
import statistics
import sys
import time
from typing import Any

from .harness import entropy_claims, grid, heldout, micro, stats
from .harness.arms import ARMS, DAPO_OWN_LOSS, ce_gppo
from .harness.plants import PLANTS, Plant, testbed_build, testbed_data
from .harness.results import write_results
from .harness.stats import cell, mean_se

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS: dict[str, dict[str, Any]] = {name: arm.fields for name, arm in ARMS.items() if "controller" not in name}
QUICK_METHODS = ["DAPO", "CE-GPPO (0.5, 1)", "DAPO + ERC"]
# Micro-experiment settings (beta1, beta2): the beta1 sweep at beta2 = 1 and the beta2 sweep at beta1 = 0.5.
MICRO_BETA1 = (0.0, 0.25, 0.5, 0.75, 1.0)
MICRO_BETA2 = (0.5, 1.0, 1.5)
MICRO_SETTINGS = sorted({(b1, 1.0) for b1 in MICRO_BETA1} | {(0.5, b2) for b2 in MICRO_BETA2})
MICRO_JOB = "micro|0"
RESULTS_START = "<!-- regime:start -->"
RESULTS_END = "<!-- regime:end -->"
# The full study's settings; --quick replaces them with QUICK (a testbed built in seconds, runs of a few seconds).
FULL = {
    "seeds": 5,
    "steps": 80,
    "prompts_per_rollout": 64,
    "learning_rate": 2e-4,
    "warmup_steps": 32,
    "micro_batches": 20,
    "heldout": 256,
    "eval_k": 8,
    "eval_every": 40,
    "sft_steps": 600,
    "label_smoothing": 0.03,
    "hidden_size": 64,
    "num_layers": 2,
    "model_dir": os.path.join("outputs", "regime-testbed"),
    "out_dir": os.path.join("outputs", "regime"),
}
QUICK = {
    "seeds": 2,
    "steps": 16,
    "prompts_per_rollout": 16,
    "learning_rate": 2e-4,
    "warmup_steps": 4,
    "micro_batches": 2,
    "heldout": 32,
    "eval_k": 2,
    "eval_every": 8,
    "sft_steps": 60,
    "label_smoothing": 0.03,
    "hidden_size": 32,
    "num_layers": 1,
    "model_dir": os.path.join("outputs", "regime-quick-testbed"),
    "out_dir": os.path.join("outputs", "regime-quick"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings for CI (defaults below are the full run's)"
    )
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="METHOD", help="default: all 11")
    parser.add_argument("--seeds", type=int, help=f"seeds per method (default {FULL['seeds']})")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per run (default {FULL['steps']})")
    parser.add_argument("--prompts-per-rollout", type=int, help="default 64")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--steps-per-generation", type=int, default=8, help="optimizer updates per rollout batch")
    parser.add_argument("--learning-rate", type=float, help="Adam, default 2e-4")
    parser.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up, then constant (default 32)")
    parser.add_argument("--max-completion-length", type=int, default=48)
    parser.add_argument("--heldout", type=int, help=f"held-out problems (default {FULL['heldout']})")
    parser.add_argument("--eval-k", type=int, help=f"samples per held-out problem (default {FULL['eval_k']})")
    parser.add_argument("--eval-every", type=int, help="steps between held-out avg@1 curve points")
    parser.add_argument(
        "--micro-batches", type=int, help="rollout batches of the micro-experiments (default 25; 0: no micro run)"
    )
    parser.add_argument("--probe-prompts", type=int, default=64, help="held-out prompts of the micro probe set")
    parser.add_argument("--sft-steps", type=int)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--num-layers", type=int)
    parser.add_argument(
        "--float32", action="store_true", help="train the sweep in float32 (default: bf16 autocast, as recorded)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (1 torch thread each); 1: this process")
    parser.add_argument("--model-dir", help="testbed model (built once, then reused)")
    parser.add_argument("--out-dir", help="saved runs")
    parser.add_argument("--json", default=os.path.join(HERE, "regime.json"), help="'' to skip")
    parser.add_argument("--plot-prefix", default=os.path.join(HERE, "regime"), help="writes PREFIX.png, _micro.png")
    parser.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"), help="'' to skip")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the saved runs")
    opts = parser.parse_args(argv)
    for name, value in (QUICK if opts.quick else FULL).items():
        if getattr(opts, name) is None:
            setattr(opts, name, value)
    if opts.methods is None:
        opts.methods = QUICK_METHODS if opts.quick else list(METHODS)
    if opts.steps % opts.steps_per_generation:
        parser.error(f"--steps {opts.steps} must be a multiple of --steps-per-generation {opts.steps_per_generation}")
    opts.eval_temperature = 1.0  # the curve (read by entropy_claims.plot)
    return opts


# The testbed.


def testbed_plant(opts: argparse.Namespace) -> Plant:
    """The registry's testbed plant at this study's settings (full or `--quick`)."""
    return dataclasses.replace(
        PLANTS["testbed"],
        build=testbed_build(opts.sft_steps, opts.label_smoothing, opts.hidden_size, opts.num_layers, opts.heldout),
        data=testbed_data(opts.heldout, 2 * opts.steps * opts.prompts_per_rollout),
    )


def build(opts: argparse.Namespace) -> dict[str, Any]:
    return testbed_plant(opts).build(opts.model_dir)


def task_data(opts: argparse.Namespace, seed: int) -> tuple[Any, Any]:
    """(train, held-out): the held-out problems are the same for every run and never in a training set."""
    return testbed_plant(opts).data(seed)


def evaluate(model: Any, tokenizer: Any, held_out: Any, opts: argparse.Namespace, seed: int) -> dict[str, float]:
    """Held-out avg@k and pass@k at T = 1 and T = 0.6, each with its own RNG stream seeded `seed` (training's is left
    untouched): each prompt's `--eval-k` samples in a row, 512 completions per `generate` call."""
    sampling = {"k": opts.eval_k, "seed": seed, "grouped": True, "batch_size": 512}
    sampling["max_new_tokens"] = opts.max_completion_length
    numbers = {}
    for name, temperature in (("t1", 1.0), ("t06", 0.6)):
        result = heldout.evaluate(
            model, tokenizer, held_out, PLANTS["testbed"].score, temperature=temperature, **sampling
        )
        numbers[f"avg_{name}"], numbers[f"pass_{name}"] = result["avg"], result["pass"]
    return numbers


def run_fields(opts: argparse.Namespace) -> dict[str, Any]:
    """The run's budget and rollout layout as `ce-gppo train` fields (beside the plant's and the method's)."""
    return {
        "per_device_train_batch_size": opts.prompts_per_rollout * opts.num_generations // opts.steps_per_generation,
        "steps_per_generation": opts.steps_per_generation,
        "num_generations": opts.num_generations,
        "max_completion_length": opts.max_completion_length,
        "learning_rate": opts.learning_rate,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": opts.warmup_steps,
        "max_steps": opts.steps,
    }


series = grid.series
quiet = grid.quiet


def start_numbers(opts: argparse.Namespace, seed: int) -> dict[str, float]:
    """Held-out numbers of the SFT model for `seed`'s evaluation stream (the same for every method), cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.join(opts.out_dir, "runs", f"start-seed{seed}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    tokenizer = AutoTokenizer.from_pretrained(opts.model_dir)
    model = AutoModelForCausalLM.from_pretrained(opts.model_dir)
    numbers = evaluate(model, tokenizer, task_data(opts, seed)[1], opts, 777 + seed)
    with open(path + f".{os.getpid()}", "w") as f:
        json.dump(numbers, f)
    os.replace(path + f".{os.getpid()}", path)
    return numbers


def run_one(opts: argparse.Namespace, method: str, seed: int) -> dict[str, Any]:
    """Train `method` with `seed`; return its curves and start / end held-out numbers."""
    from transformers import AutoTokenizer, TrainerCallback

    tokenizer = AutoTokenizer.from_pretrained(opts.model_dir)
    train, held_out = task_data(opts, seed)
    start = start_numbers(opts, seed)
    curve: list[tuple[int, float]] = [(0, start["avg_t1"])]
    curve_sampling = {"k": 1, "temperature": 1.0, "grouped": True, "batch_size": 512}
    curve_sampling["max_new_tokens"] = opts.max_completion_length

    class HeldOutCurve(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.global_step % opts.eval_every == 0 and state.global_step < state.max_steps:
                score, step = PLANTS["testbed"].score, state.global_step
                accuracy = heldout.evaluate(model, tokenizer, held_out, score, seed=seed + step, **curve_sampling)
                curve.append((step, accuracy["avg"]))

    fields = {**run_fields(opts), "bf16": not opts.float32, **METHODS[method]}
    output_dir = os.path.join(opts.out_dir, "trainer", f"{grid.slug(method)}-{seed}")
    run = {"seed": seed, "output_dir": output_dir, "model_dir": opts.model_dir, "train_dataset": train}
    trainer = quiet(grid.build(testbed_plant(opts), fields, **run))
    trainer.add_callback(HeldOutCurve())
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    end = evaluate(trainer.model, tokenizer, held_out, opts, 777 + seed)
    curve.append((opts.steps, end["avg_t1"]))
    history = trainer.state.log_history
    erc = [
        low + high
        for low, high in zip(
            series(history, "entropy_ratio/clip_low_mean"),
            series(history, "entropy_ratio/clip_high_mean"),
            strict=True,
        )
    ]
    return {
        "method": method,
        "seed": seed,
        "seconds": wall,
        "cpu_seconds": cpu,
        "entropy": series(history, "entropy"),
        "reward": series(history, "reward"),
        "clip_region": series(history, "clip_ratio/region_mean"),
        "erc_masked": erc,
        "accuracy_curve": curve,
        "final_accuracy": end["avg_t1"],
        "heldout_start": start,
        "heldout_end": end,
    }


# The micro-experiments and the diagnostics check, in one DAPO run of this library's trainer.


def micro_fields(opts: argparse.Namespace) -> dict[str, Any]:
    """The micro run's command-line fields: DAPO's gradient on this library's loss path, which logs
    entropy_dynamics/* (loss_type "dapo" alone runs TRL's own loss, without diagnostics), with the diagnostics on;
    as long as its micro batches need."""
    return {
        **run_fields(opts),
        **DAPO_OWN_LOSS,
        "entropy_diagnostics": True,
        "entropy_attribution_steps": 1,
        "max_steps": opts.micro_batches * opts.steps_per_generation,
    }


def run_micro(opts: argparse.Namespace) -> dict[str, Any]:
    """A DAPO run (this library's loss path, built as `ce-gppo train` builds it) that, at each of its first
    `--micro-batches` rollout batches, runs the paired micro-experiments, and records every update's predicted and
    realised entropy change."""
    from transformers import TrainerCallback

    plant, fields = testbed_plant(opts), micro_fields(opts)
    run = {"seed": 0, "model_dir": opts.model_dir}
    trainer = grid.build(plant, fields, output_dir=os.path.join(opts.out_dir, "trainer", "micro-dapo-0"), **run)
    _, held_out = task_data(opts, 0)
    probe_prompts = list(held_out["prompt"][: opts.probe_prompts])
    spg = opts.steps_per_generation
    arms: dict[tuple[float, float], Any] = {}
    batches: list[dict[str, Any]] = []
    diagnostics: list[dict[str, float]] = []

    def arm_trainers() -> dict[tuple[float, float], Any]:
        for setting in MICRO_SETTINGS if not arms else ():
            overrides = {**fields, **micro.NO_DIAGNOSTICS, **ce_gppo(*setting)}
            args = grid.parse(plant, overrides, output_dir=os.path.join(opts.out_dir, "trainer", "micro-arm"), **run)
            arms[setting] = micro.arm_trainer(trainer, args[1])
        return arms

    class Probe(TrainerCallback):
        snapshot: micro.Frozen | None = None

        pending: dict[str, Any] | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step % spg == 0 and len(batches) < opts.micro_batches:
                self.snapshot = micro.freeze(trainer)
            # The micro-batch of this update is known before it only when the rollout batch is already generated.
            if trainer._buffered_inputs is not None and trainer._step % spg != 0:
                self.pending = predict_update(trainer, trainer._buffered_inputs[trainer._step % spg])

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # The step's metrics, not yet logged: its entropy (before the update, over this micro-batch's completion
            # tokens) and the change the diagnostics predict for the update.
            logged = {key: values[-1] for key, values in trainer._metrics["train"].items() if values}
            batch = trainer._buffered_inputs[(trainer._step - 1) % spg]
            after = micro.mean_entropy(trainer.model, batch, trainer.args.temperature)
            diagnostics.append(
                {
                    "step": state.global_step,
                    "predicted_delta": logged["entropy_dynamics/predicted_delta"],
                    "entropy_before": logged["entropy"],
                    "realised_delta": after - logged["entropy"],
                    "predicted_param_space": logged["entropy_attribution/predicted"],
                    "realised_library": logged["entropy_attribution/realised"],
                }
            )
            if self.pending is not None:
                diagnostics[-1].update(self.pending)
                self.pending = None
            if self.snapshot is not None and state.global_step % spg == 1:
                batches.append(micro_batch(trainer, arm_trainers(), probe_prompts, self.snapshot, opts, len(batches)))
                self.snapshot = None

    trainer.add_callback(Probe())
    quiet(trainer)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    return {
        "micro": batches,
        "diagnostics": diagnostics,
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "entropy": series(trainer.state.log_history, "entropy"),
    }


def predict_update(trainer: Any, batch: dict[str, Any]) -> dict[str, float]:
    """Before an update, two logit-space predictions of the change of the micro-batch's mean entropy, to explain the
    diagnostics check: the logged formula recomputed (`sum g * -p (log p + H)`), and the same with the softmax's
    centring term (a step on `log p_a` moves every logit of the softmax by `g (e_a - p)`, which adds
    `g * sum_j p_j^2 (log p_j + H)`), both in logit-step units. The parameter-space prediction
    `grad_theta H . delta_theta` is the library's `entropy_attribution/predicted`."""
    import torch

    from ce_gppo_trl.losses import aggregate_loss, gppo_policy_loss

    model, args = trainer.model, trainer.args
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    width = batch["completion_ids"].size(1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -width - 1 : -1] / args.temperature
    log_probs = logits.log_softmax(-1)
    probs = log_probs.exp()
    logps = log_probs.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    entropies = -(probs * log_probs).sum(-1)
    mask = batch["completion_mask"].float()
    per_token = gppo_policy_loss(
        logps - batch["old_per_token_logps"],
        batch["advantages"].unsqueeze(1),
        epsilon_low=args.epsilon,
        epsilon_high=args.epsilon_high,
        beta1=args.ce_gppo_beta1,
        beta2=args.ce_gppo_beta2,
        clip_ratio_c=args.clip_ratio_c,
    )
    loss = aggregate_loss(
        per_token, mask, "token-mean", num_items=batch["num_items_in_batch"] / args.steps_per_generation
    )
    (grad_logps,) = torch.autograd.grad(loss, logps)
    with torch.no_grad():
        g, p_a, h = -grad_logps, logps.exp(), entropies
        own = -g * p_a * (logps + h)
        centring = g * (probs.pow(2) * (log_probs + h.unsqueeze(-1))).sum(-1)
        return {
            "predicted_recomputed": float((own * mask).sum()),
            "predicted_full_softmax": float(((own + centring) * mask).sum()),
        }


def micro_batch(
    trainer: Any,
    arms: dict[tuple[float, float], Any],
    prompts: list[str],
    snapshot: micro.Frozen,
    opts: argparse.Namespace,
    index: int,
) -> dict[str, Any]:
    """From the frozen state before this rollout batch's first update, the batch's 8 updates per setting, each
    through the setting's trainer's own `compute_loss`; the run's own state is restored afterwards."""
    import torch

    current = micro.freeze(trainer)
    batches = list(trainer._buffered_inputs)  # the rollout batch TRL buffered for this batch's updates
    micro.restore(trainer, snapshot)
    probe = micro.probe_batch(
        trainer.model, trainer.processing_class, prompts, opts.max_completion_length, 10_000 + index
    )
    entropy_before = micro.mean_entropy(trainer.model, probe, trainer.args.temperature)
    deltas, clipped = {}, {}
    with torch.random.fork_rng():
        for (beta1, beta2), arm in arms.items():
            micro.restore(trainer, snapshot, arm)
            fractions = [micro.update(arm, b)["clipped"] for b in batches]
            deltas[f"{beta1},{beta2}"] = (
                micro.mean_entropy(trainer.model, probe, trainer.args.temperature) - entropy_before
            )
            clipped[f"{beta1},{beta2}"] = statistics.fmean(fractions)
    micro.restore(trainer, current)
    return {"index": index, "entropy_before": entropy_before, "delta": deltas, "clipped": clipped}


# Orchestration.


MICRO = "micro"  # the job of the micro run (its arm name; plant "" keeps the saved file names of earlier studies)


def run_job(opts: argparse.Namespace, job: grid.Job) -> dict[str, Any]:
    return run_micro(opts) if job.arm == MICRO else run_one(opts, job.arm, job.seed)


def run_study(opts: argparse.Namespace) -> tuple[dict, list[dict], dict]:
    record = build(opts)
    print(
        f"testbed {opts.model_dir}: SFT held-out greedy {record['accuracy_greedy']:.2f}, sampled (T=1) "
        f"{record['accuracy_sampled']:.2f}, built in {record['build_seconds']:.0f}s",
        flush=True,
    )
    # The micro run is the longest: it goes first so that the two workers finish together.
    micro_job = [grid.Job("", MICRO, 0)] * (opts.micro_batches > 0)
    jobs = [grid.Job("", m, s) for s in range(opts.seeds) for m in opts.methods]
    if not opts.report_only:
        grid.run_grid([*micro_job, *jobs], functools.partial(run_job, opts), out_dir=opts.out_dir, workers=opts.jobs)
    results = grid.load_runs(jobs, opts.out_dir, missing_ok=True)
    found = grid.load_runs(micro_job, opts.out_dir, missing_ok=True)
    return record, results, found[0] if found else {}


# Statistics, tables, verdicts.


def summarize_micro(micro: dict[str, Any]) -> dict[str, Any]:
    """Per setting: mean and SE over rollout batches of the entropy change; and the paired differences along each
    sweep (a larger beta minus the smaller next to it), whose SE is free of the batch-to-batch spread."""
    batches = micro.get("micro", [])
    if not batches:
        return {"beta1": {}, "beta2": {}, "batches": 0}

    def values(beta1: float, beta2: float) -> list[float]:
        return [b["delta"][f"{beta1},{beta2}"] for b in batches]

    out: dict[str, Any] = {"batches": len(batches), "beta1": {}, "beta2": {}, "paired": {}, "clipped": {}}
    for beta1 in MICRO_BETA1:
        out["beta1"][str(beta1)] = list(mean_se(values(beta1, 1.0)))
    for beta2 in MICRO_BETA2:
        out["beta2"][str(beta2)] = list(mean_se(values(0.5, beta2)))
    for name, settings in (
        ("beta1", [(b, 1.0) for b in MICRO_BETA1]),
        ("beta2", [(0.5, b) for b in MICRO_BETA2]),
    ):
        low, high = settings[0], settings[-1]
        diffs = [h - lo for h, lo in zip(values(*high), values(*low), strict=True)]
        out["paired"][f"{name} {low} -> {high}"] = list(mean_se(diffs))
    for beta1, beta2 in MICRO_SETTINGS:
        out["clipped"][f"{beta1},{beta2}"] = statistics.fmean(b["clipped"][f"{beta1},{beta2}"] for b in batches)
    return out


def summarize(results: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per method: (mean, SE over seeds) of each number, plus `entropy_claims.per_method`'s end / swing errors."""
    base = entropy_claims.per_method(results, methods)
    summary = {}
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        rewards = [(statistics.fmean(r["reward"][:8]), entropy_claims.end_value(r["reward"])) for r in runs]
        numbers = {
            "entropy_start": [r["entropy"][0] for r in runs],
            "entropy_min": [min(r["entropy"]) for r in runs],
            "entropy_end": [entropy_claims.end_value(r["entropy"]) for r in runs],
            "entropy_end_ratio": [entropy_claims.end_value(r["entropy"]) / r["entropy"][0] for r in runs],
            "reward_start": [a for a, _ in rewards],
            "reward_end": [b for _, b in rewards],
            "clip": [statistics.fmean(r["clip_region"]) if r["clip_region"] else float("nan") for r in runs],
            "erc_masked": [statistics.fmean(r["erc_masked"]) if r["erc_masked"] else float("nan") for r in runs],
            "seconds": [r["seconds"] for r in runs],
            "cpu_seconds": [r["cpu_seconds"] for r in runs],
        }
        for when in ("start", "end"):
            for key in ("avg_t1", "pass_t1", "avg_t06", "pass_t06"):
                numbers[f"{key}_{when}"] = [r[f"heldout_{when}"][key] for r in runs]
        numbers["gain_t1"] = [r["heldout_end"]["avg_t1"] - r["heldout_start"]["avg_t1"] for r in runs]
        summary[method] = {name: mean_se(v) for name, v in numbers.items()}
        summary[method].update(
            base[method]
        )  # "start", "end", "end_se", "swing", "swing_se" for entropy_claims.check_claims
        summary[method]["seeds"] = (float(len(runs)), 0.0)
    return summary


def format_tables(summary: dict[str, Any], opts: argparse.Namespace) -> str:
    k = opts.eval_k
    head = (
        f"| method | entropy start | min | end | end / start | held-out avg@{k} T=1 | pass@{k} T=1 | avg@{k} T=0.6 "
        f"| pass@{k} T=0.6 | reward start -> end | clipped | ERC-masked | seeds | s / run (CPU s) |"
    )
    lines = [head, "|" + "---|" * 14]
    for method, s in summary.items():
        lines.append(
            f"| {method} | {cell(s['entropy_start'])} | {cell(s['entropy_min'])} | {cell(s['entropy_end'])} "
            f"| {cell(s['entropy_end_ratio'], 2)} | {cell(s['avg_t1_end'])} | {cell(s['pass_t1_end'])} "
            f"| {cell(s['avg_t06_end'])} | {cell(s['pass_t06_end'])} "
            f"| {s['reward_start'][0]:.2f} -> {cell(s['reward_end'], 2)} | {cell(s['clip'])} "
            f"| {cell(s['erc_masked'])} | {s['seeds'][0]:.0f} | {s['seconds'][0]:.0f} ({s['cpu_seconds'][0]:.0f}) |"
        )
    first = next(iter(summary.values()))
    lines.append(
        f"\nStart (SFT model, same for every method; mean ± SE over the seeds' evaluation streams): held-out "
        f"avg@{k} T=1 {cell(first['avg_t1_start'])}, pass@{k} T=1 {cell(first['pass_t1_start'])}, avg@{k} T=0.6 "
        f"{cell(first['avg_t06_start'])}, pass@{k} T=0.6 {cell(first['pass_t06_start'])}."
    )
    return "\n".join(lines)


def regime_checks(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    checks = []
    if "DAPO" in summary:
        gain = summary["DAPO"]["gain_t1"]
        verdict = stats.HOLDS if gain[0] >= 0.15 else stats.FAILS
        checks.append(("DAPO raises held-out avg@8 at T = 1 by >= 0.15", verdict, f"gain {cell(gain)}"))
    for method in ("GRPO", "DAPO"):
        if method in summary:
            ratio = summary[method]["entropy_end_ratio"]
            verdict = stats.HOLDS if ratio[0] <= 0.25 else stats.FAILS
            checks.append((f"{method} entropy falls to <= 25% of its start", verdict, f"end / start {cell(ratio, 3)}"))
    return checks


def accuracy_claims(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """CE-GPPO (0.5, 1) against DAPO on held-out avg@k at T = 1 (the papers: CE-GPPO ends more accurate)."""
    a, b = "DAPO", "CE-GPPO (0.5, 1)"
    if a not in summary or b not in summary:
        return []
    (ma, sa), (mb, sb) = summary[a]["avg_t1_end"], summary[b]["avg_t1_end"]
    verdict = stats.verdict((mb - ma, math.hypot(sa, sb)), expected_sign=1)
    return [
        (
            "CE-GPPO (0.5, 1) ends with higher held-out accuracy than DAPO",
            verdict,
            f"{a} {ma:.3f} ± {sa:.3f}, {b} {mb:.3f} ± {sb:.3f}",
        )
    ]


def micro_claims(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    claims = []
    for name, word, sign in (("beta1", "down", -1), ("beta2", "up", 1)):
        key = next((k for k in m.get("paired", {}) if k.startswith(name)), None)
        if key is None:
            continue
        mean, se = m["paired"][key]
        verdict = stats.verdict((mean, se), expected_sign=sign)
        claims.append(
            (
                f"larger {name} -> entropy {word} (paired micro-experiments, same weights and rollout batch)",
                verdict,
                f"change of the probe entropy, {key}: {mean:+.4f} ± {se:.4f} nats over {m['batches']} batches",
            )
        )
    return claims


def diagnostics_check(micro: dict[str, Any]) -> dict[str, Any]:
    points = micro.get("diagnostics", [])
    if len(points) < 3:
        return {"pearson_r": float("nan"), "slope": float("nan"), "updates": len(points)}
    x = [p["predicted_delta"] for p in points]
    y = [p["realised_delta"] for p in points]
    r, slope, intercept = stats.pearson_slope(x, y)
    # Same-sign rate: how often the predicted direction of the change is the realised one.
    agree = statistics.fmean((a > 0) == (b > 0) for a, b in zip(x, y, strict=True))
    out = {"pearson_r": r, "slope": slope, "intercept": intercept, "sign_agreement": agree, "updates": len(points)}
    # The alternative predictors, on the updates that have them (all but the first of each rollout batch).
    for name in ("predicted_recomputed", "predicted_full_softmax", "predicted_param_space"):
        pairs = [(p[name], p["realised_delta"]) for p in points if name in p]
        if len(pairs) >= 3:
            r_alt, slope_alt, _ = stats.pearson_slope([a for a, _ in pairs], [b for _, b in pairs])
            out[name] = {"pearson_r": r_alt, "slope": slope_alt, "updates": len(pairs)}
    # The library's realised change against this script's own measurement of it (same tokens, same weights).
    gaps = [abs(p["realised_library"] - p["realised_delta"]) for p in points if "realised_library" in p]
    if gaps:
        out["realised_library_max_gap"] = max(gaps)
    subset = [p for p in points if "predicted_recomputed" in p]
    if len(subset) >= 3:
        r_sub, slope_sub, _ = stats.pearson_slope(
            [p["predicted_delta"] for p in subset], [p["realised_delta"] for p in subset]
        )
        out["predicted_delta_same_updates"] = {"pearson_r": r_sub, "slope": slope_sub, "updates": len(subset)}
    return out


DIAGNOSTIC_NAMES = {
    "predicted_delta_same_updates": "logged predicted_delta on the updates below",
    "predicted_recomputed": "the logged formula recomputed",
    "predicted_full_softmax": "with the softmax centring term",
    "predicted_param_space": "entropy_attribution/predicted (grad_theta H . delta_theta of the real update)",
}


# Plots.


def plot_micro(micro: dict[str, Any], summary_micro: dict[str, Any], diag: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_1, ax_2, ax_d, ax_p) = plt.subplots(1, 4, figsize=(21, 4.8))
    for ax, name, other in ((ax_1, "beta1", "beta2 = 1"), (ax_2, "beta2", "beta1 = 0.5")):
        points = summary_micro.get(name, {})
        xs = [float(k) for k in points]
        ax.errorbar(xs, [v[0] for v in points.values()], yerr=[v[1] for v in points.values()], marker="o", capsize=4)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(
            xlabel=name,
            ylabel="probe entropy change after 8 updates (nats)",
            title=f"{name} sweep at {other}, mean ± SE over {summary_micro.get('batches', 0)} batches",
        )
        ax.grid(alpha=0.3)
    points = micro.get("diagnostics", [])
    if points:
        x = [p["predicted_delta"] for p in points]
        y = [p["realised_delta"] for p in points]
        ax_d.scatter(x, y, s=8, alpha=0.6)
        if not math.isnan(diag["slope"]):
            lo, hi = min(x), max(x)
            ax_d.plot([lo, hi], [diag["intercept"] + diag["slope"] * lo, diag["intercept"] + diag["slope"] * hi], "r-")
        ax_d.axhline(0, color="grey", lw=0.8)
        ax_d.axvline(0, color="grey", lw=0.8)
    ax_d.set(
        xlabel="entropy_dynamics/predicted_delta",
        ylabel="realised change of the micro-batch's mean entropy",
        title=f"Diagnostics: r = {diag['pearson_r']:.2f}, slope = {diag['slope']:.3g} ({diag['updates']} updates)",
    )
    ax_d.grid(alpha=0.3)
    # The same realised changes against the first-order change of the real update in parameter space.
    pairs = [(p["predicted_param_space"], p["realised_delta"]) for p in points if "predicted_param_space" in p]
    if pairs:
        ax_p.scatter([a for a, _ in pairs], [b for _, b in pairs], s=8, alpha=0.6, color="tab:green")
        lo, hi = min(min(a, b) for a, b in pairs), max(max(a, b) for a, b in pairs)
        ax_p.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        ax_p.legend(fontsize=8)
    alt = diag.get("predicted_param_space", {})
    ax_p.set(
        xlabel="grad_theta H . delta_theta (first order, real update)",
        ylabel="realised change of the micro-batch's mean entropy",
        title=f"Parameter-space first order: r = {alt.get('pearson_r', float('nan')):.2f}, "
        f"slope = {alt.get('slope', float('nan')):.2f}",
    )
    ax_p.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Report.


def regime_json(opts: argparse.Namespace, record: dict, results: list[dict], summary_micro: dict, diag: dict) -> dict:
    testbed = {
        key: record[key]
        for key in ("sft_steps", "label_smoothing", "hidden_size", "num_layers", "num_terms", "heldout")
    }
    testbed.update(
        sft_accuracy_greedy=record["accuracy_greedy"],
        sft_accuracy_sampled_t1=record["accuracy_sampled"],
        steps=opts.steps,
        prompts_per_rollout=opts.prompts_per_rollout,
        num_generations=opts.num_generations,
        updates_per_rollout_batch=opts.steps_per_generation,
        learning_rate=opts.learning_rate,
        max_completion_length=opts.max_completion_length,
        eval_k=opts.eval_k,
        seeds=opts.seeds,
        quick=opts.quick,
    )
    methods: dict[str, Any] = {}
    for r in results:
        methods.setdefault(r["method"], {"seeds": []})["seeds"].append(
            {
                "seed": r["seed"],
                "entropy_start": r["entropy"][0],
                "entropy_min": min(r["entropy"]),
                "entropy_end": entropy_claims.end_value(r["entropy"]),
                "heldout_t1_start": r["heldout_start"]["avg_t1"],
                "heldout_t1_end": r["heldout_end"]["avg_t1"],
                "heldout_pass_t1_end": r["heldout_end"]["pass_t1"],
                "heldout_t06_start": r["heldout_start"]["avg_t06"],
                "heldout_t06_end": r["heldout_end"]["avg_t06"],
                "heldout_pass_t06_end": r["heldout_end"]["pass_t06"],
                "reward_end": entropy_claims.end_value(r["reward"]),
                "clipped_fraction": statistics.fmean(r["clip_region"]) if r["clip_region"] else None,
                "erc_masked_fraction": statistics.fmean(r["erc_masked"]) if r["erc_masked"] else None,
                "seconds": r["seconds"],
                "cpu_seconds": r["cpu_seconds"],
            }
        )
    micro_out = {k: summary_micro.get(k, {}) for k in ("beta1", "beta2", "paired", "clipped")}
    micro_out["batches"] = summary_micro.get("batches", 0)
    return {"testbed": testbed, "methods": methods, "micro": micro_out, "diagnostics": diag}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    wall = time.perf_counter()
    record, results, micro = run_study(opts)
    summary = summarize(results, opts.methods)
    summary_micro = summarize_micro(micro)
    diag = diagnostics_check(micro)
    claims = (
        regime_checks(summary)
        + entropy_claims.check_claims(summary)
        + accuracy_claims(summary)
        + micro_claims(summary_micro)
    )
    entropy_claims.plot(results, opts.methods, opts.plot_prefix + ".png", opts)
    plot_micro(micro, summary_micro, diag, opts.plot_prefix + "_micro.png")
    report = regime_json(opts, record, results, summary_micro, diag)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=1)
    micro_rows = ["| setting (beta1, beta2) | probe entropy change (mean ± SE) | clipped tokens |", "|---|---|---|"]
    for beta1, beta2 in MICRO_SETTINGS:
        values = [b["delta"][f"{beta1},{beta2}"] for b in micro.get("micro", [])]
        clip = summary_micro.get("clipped", {}).get(f"{beta1},{beta2}", float("nan"))
        micro_rows.append(f"| ({beta1}, {beta2}) | {cell(mean_se(values), 4)} | {clip:.3f} |")
    command = shlex.join(["python", "-m", "benchmarks.regime", *argv])
    verdicts = "\n".join(f"- **{verdict}**: {claim}. {detail}." for claim, verdict, detail in claims)
    took = time.perf_counter() - wall
    block = (
        f"Command: `{command}` ({took / 60:.1f} min wall for this invocation; runs reused from earlier invocations "
        f"are not counted; CPU time per run is in the table)\n\n"
        f"Testbed: SFT held-out greedy {record['accuracy_greedy']:.2f}, sampled (T=1) avg@4 "
        f"{record['accuracy_sampled']:.2f}; {opts.steps} steps = {opts.steps // opts.steps_per_generation} rollout "
        f"batches of {opts.prompts_per_rollout} x {opts.num_generations}, {opts.steps_per_generation} updates each, "
        f"lr {opts.learning_rate:g}; {opts.seeds} seeds. Mean ± SE over seeds.\n\n"
        f"{format_tables(summary, opts)}\n\n"
        f"Micro-experiments ({summary_micro.get('batches', 0)} rollout batches along a DAPO run):\n\n"
        + "\n".join(micro_rows)
        + f"\n\nDiagnostics: {diag['updates']} updates, Pearson r {diag['pearson_r']:.3f}, slope {diag['slope']:.4g}"
        + (f", sign agreement {diag['sign_agreement']:.2f}" if "sign_agreement" in diag else "")
        + "".join(
            f"; {DIAGNOSTIC_NAMES[name]}: r {diag[name]['pearson_r']:.3f}, slope {diag[name]['slope']:.4g} "
            f"({diag[name]['updates']} updates)"
            for name in DIAGNOSTIC_NAMES
            if name in diag
        )
        + f".\n\nVerdicts (2 standard errors):\n\n{verdicts}"
    )
    print(block)
    if opts.results_md:
        write_results(opts.results_md, block, RESULTS_START, RESULTS_END)
    return {"summary": summary, "micro": summary_micro, "diagnostics": diag, "claims": claims, "json": report}


if __name__ == "__main__":
    main()
