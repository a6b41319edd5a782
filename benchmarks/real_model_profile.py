"""Where one optimizer step of the real-model recipe goes (issue 32): generation, the old-log-prob pass, the
rewards, the training forward and backward, the optimizer step; tokens, FLOPs and the model FLOPs utilisation
against a float32 matmul measured in the same process.

    OMP_NUM_THREADS=2 python -m benchmarks.real_model_profile --threads 2 [--steps 8] [recipe overrides ...]

Runs the recipe (`configs/SmolLM2-135M-Instruct/ce_gppo_cpu.yaml`) through `cli.build_trainer`, as `ce-gppo train`
does, for `--steps` optimizer steps (a multiple of the updates per rollout batch, so that generation is counted
once per rollout) and prints one JSON line: seconds per optimizer step by part, tokens per rollout, GFLOP/s of each
part and of the whole step, and the matmul's GFLOP/s (the limit this CPU allows at this thread count). FLOPs are
`2 N` per token forward and `2 N` more backward (activation gradients; LoRA's own weight gradients are negligible),
`N` the parameters a token passes through (every weight matrix, the tied head included); attention's
context-length terms are left out (prompts of about 100 tokens: under 3% at this model's width).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from typing import Any

import torch

from ce_gppo_trl.cli import build_trainer, parse_train_args

RECIPE = "configs/SmolLM2-135M-Instruct/ce_gppo_cpu.yaml"


def matmul_gflops(seconds: float = 3.0) -> float:
    """float32 GFLOP/s of a (2048 x 576) @ (576 x 1536) matmul, the shape of this model's MLP on a 2048-token batch."""
    a, b = torch.randn(2048, 576), torch.randn(576, 1536)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * 2048 * 576 * 1536 * count / (time.perf_counter() - start) / 1e9


class Timers:
    """Wall time per part, by wrapping the trainer's own methods (the path `ce-gppo train` runs)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.tokens: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, part: Any) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                label = part(args, kwargs) if callable(part) else part
                self.seconds[label] += time.perf_counter() - start

        setattr(owner, name, timed)


def profile(threads: int, steps: int, overrides: list[str]) -> dict[str, Any]:
    torch.set_num_threads(threads)
    script_args, training_args, model_args = parse_train_args(
        ["--config", RECIPE, "--max_steps", str(steps), "--save_strategy", "no", "--logging_steps", "1", *overrides]
    )
    trainer = build_trainer(script_args, training_args, model_args)
    timers = Timers()
    timers.wrap(trainer, "_generate", "generation")
    timers.wrap(trainer, "_calculate_rewards", "rewards")
    timers.wrap(
        trainer,
        "_get_per_token_logps_and_entropies",
        lambda args, kwargs: "training forward" if torch.is_grad_enabled() else "old log-prob pass",
    )
    timers.wrap(trainer.accelerator, "backward", "backward")
    original_score = trainer._generate_and_score_completions

    def scored(inputs: Any) -> Any:
        output = original_score(inputs)
        timers.tokens["prompt"] += float(output["prompt_mask"].sum())
        timers.tokens["completion"] += float(output["completion_mask"].sum())
        timers.tokens["rows"] += output["prompt_ids"].shape[0]
        timers.tokens["padded prompt"] += output["prompt_ids"].numel()
        timers.tokens["padded completion"] += output["completion_ids"].numel()
        return output

    trainer._generate_and_score_completions = scored
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    timers.seconds["other (optimizer, scheduling, metrics)"] = total - sum(timers.seconds.values())
    n = sum(p.numel() for p in trainer.model.parameters())  # the tied head is counted once, and used once per token
    tokens = timers.tokens
    flops = {
        # prefill over the padded prompts, one decode step per padded completion position (KV cache)
        "generation": 2 * n * (tokens["padded prompt"] + tokens["padded completion"]),
        "old log-prob pass": 2 * n * (tokens["padded prompt"] + tokens["padded completion"]),
        "training forward": 2 * n * (tokens["padded prompt"] + tokens["padded completion"]),
        "backward": 2 * n * (tokens["padded prompt"] + tokens["padded completion"]),
    }
    peak = matmul_gflops()
    rollouts = steps / (
        training_args.steps_per_generation * training_args.num_iterations / training_args.gradient_accumulation_steps
    )
    return {
        "threads": threads,
        "steps": steps,
        "seconds_per_step": round(total / steps, 2),
        "parts_seconds_per_step": {k: round(v / steps, 2) for k, v in sorted(timers.seconds.items())},
        "tokens_per_rollout": {k: round(v / rollouts, 1) for k, v in tokens.items()},
        "gflops_per_second": {
            part: round(flops[part] / timers.seconds[part] / 1e9, 2) for part in flops if timers.seconds[part] > 0
        },
        "step_gflops_per_second": round(sum(flops.values()) / total / 1e9, 2),
        "matmul_gflops_per_second": round(peak, 2),
        "model_flops_utilisation": round(sum(flops.values()) / total / 1e9 / peak, 3),
        "parameters": n,
        "overrides": overrides,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=8)
    known, overrides = parser.parse_known_args()
    print(json.dumps(profile(known.threads, known.steps, overrides)))


if __name__ == "__main__":
    main()
