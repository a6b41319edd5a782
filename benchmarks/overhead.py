"""Cost of CE-GPPO with everything on, against TRL's own `GRPOTrainer(loss_type="dapo")`.

Arm `trl`: `trl.GRPOTrainer`, `loss_type="dapo"` (clip-higher, token-mean). Arm `ours`: `CEGPPOTrainer` with
`loss_type="ce_gppo"` (0.5, 1), the dual clip, Entropy Ratio Clipping (0.95 / 1.05), the ID clip schedule and the
`entropy_dynamics/*` diagnostics. Both arms get the same model weights, seed, prompts, reward and off-policy
mini-batch layout (`steps_per_generation` updates per rollout batch), and every completion is generated to full
length (`min_new_tokens`), so that both arms process the same number of tokens whatever their weights become.

Each run is its own process; runs alternate A B B A A B ... over `--pairs` pairs (so that neither arm always goes
first) and the script prints the medians:

- wall time of `trainer.train()`, and the part of it outside `generate` (the training side, where the two arms
  differ: the scoring pass, the loss, the backward, the metrics);
- peak memory: on CPU the process's RSS high-water mark (`getrusage(RUSAGE_SELF).ru_maxrss`) and its rise over the
  RSS measured just before `train()`; on CUDA `torch.cuda.max_memory_allocated`;
- model forward passes, counted by a forward pre-hook on the model, split into those inside `generate` (one per
  decoding step) and the others (TRL's scoring pass for `old_per_token_logps` and the training forwards).

    python benchmarks/overhead.py                      # CPU, random-init Llama of width 256, 5 pairs
    python benchmarks/overhead.py --device cuda --bf16 --model-config qwen2.5-1.5b --completion-length 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

ARMS = ("trl", "ours")
# Random-init models: `toy-<width>` is a Llama on the toy tokenizer (26 tokens); the `qwen2.5-*` entries are the
# published Qwen2.5 configs (vocabulary padded with filler tokens so the toy tokenizer can decode every id).
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "toy-256": {"model_type": "llama", "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4},
    "toy-512": {"model_type": "llama", "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 4},
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-1.5b": {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
}


@dataclass
class RunResult:
    arm: str
    train_seconds: float
    generate_seconds: float
    train_cpu_seconds: float
    generate_cpu_seconds: float
    peak_memory_mib: float
    memory_rise_mib: float
    forwards_generate: int
    forwards_train: int
    completion_tokens: int
    steps: int

    @property
    def non_generate_seconds(self) -> float:
        return self.train_seconds - self.generate_seconds

    @property
    def non_generate_cpu_seconds(self) -> float:
        return self.train_cpu_seconds - self.generate_cpu_seconds


def build_model_dir(model_config: str, path: str, seed: int = 0) -> str:
    """Save a random-init model of `MODEL_CONFIGS[model_config]` with the toy tokenizer to `path`."""
    from ce_gppo_trl.toy import save_random_model

    spec = dict(MODEL_CONFIGS[model_config])
    spec.setdefault("num_attention_heads", 4)
    spec.setdefault("num_key_value_heads", spec["num_attention_heads"])
    save_random_model(path, spec.pop("model_type"), seed=seed, max_position_embeddings=4096, **spec)
    return path


def token_parity_reward(completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    """Share of even token ids: a dense reward that differs between completions of any model and vocabulary."""
    return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]


def trainer_kwargs(opts: argparse.Namespace, arm: str) -> dict[str, Any]:
    """Config fields of one arm; everything but the loss settings is shared."""
    shared = {
        "output_dir": os.path.join(opts.work_dir, f"run-{arm}"),
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "seed": opts.seed,
        "data_seed": opts.seed,
        "use_cpu": opts.device == "cpu",
        "bf16": opts.bf16,
        "per_device_train_batch_size": opts.batch_size,
        "gradient_accumulation_steps": 1,
        # Several optimizer updates per rollout batch: off-policy after the first, so TRL runs its scoring pass
        # for old_per_token_logps in both arms and the clipping rules (and ERC) act.
        "steps_per_generation": opts.steps_per_generation,
        "num_generations": opts.num_generations,
        "max_completion_length": opts.completion_length,
        "generation_kwargs": {"min_new_tokens": opts.completion_length},
        "temperature": 1.0,
        "learning_rate": 1e-5,
        "max_steps": opts.steps,
        "beta": 0.0,
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "loss_type": "dapo",
    }
    if arm == "trl":
        return shared
    return {
        **shared,
        "loss_type": "ce_gppo",
        "ce_gppo_beta1": 0.5,
        "ce_gppo_beta2": 1.0,
        "clip_ratio_c": 10.0,
        "erc_low": 0.95,
        "erc_high": 1.05,
        "prob_clip_schedule": "increase_decrease",
        "entropy_diagnostics": True,
    }


class ForwardCounter:
    """Counts model forward calls, separately inside `generate`, and times `generate`."""

    def __init__(self, model: Any) -> None:
        self.generate_calls = 0
        self.other_calls = 0
        self.generate_seconds = 0.0
        self.generate_cpu_seconds = 0.0
        self._in_generate = False
        model.register_forward_pre_hook(self._count)
        generate = model.generate

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            self._in_generate = True
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                return generate(*args, **kwargs)
            finally:
                _synchronize()
                self.generate_seconds += time.perf_counter() - start
                self.generate_cpu_seconds += time.process_time() - start_cpu
                self._in_generate = False

        # TRL calls `unwrap_model_for_generation(...).generate`, which is this instance on one process.
        model.generate = timed_generate

    def _count(self, module: Any, args: Any) -> None:
        if self._in_generate:
            self.generate_calls += 1
        else:
            self.other_calls += 1


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_arm(opts: argparse.Namespace, arm: str) -> RunResult:
    """Train one arm in this process and measure it."""
    import torch
    from transformers import AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
    from ce_gppo_trl.toy import make_arithmetic_dataset

    if opts.device == "cpu":
        torch.set_num_threads(opts.threads)
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if arm == "trl" else (CEGPPOConfig, CEGPPOTrainer)
    args = config_class(**trainer_kwargs(opts, arm))
    tokens = []

    def reward(completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        tokens.append(sum(len(ids) for ids in completion_ids))
        return token_parity_reward(completion_ids)

    set_seed(opts.seed)
    from transformers import AutoModelForCausalLM

    # float32 weights in both precisions: with --bf16 the compute is bf16 (autocast), and the optimizer steps float32
    # master weights, which CEGPPOTrainer requires of a plain optimizer (docs/launching.md, "Master weights").
    model = AutoModelForCausalLM.from_pretrained(opts.model_dir, dtype=torch.float32)
    trainer = trainer_class(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=make_arithmetic_dataset(opts.batch_size * opts.steps, seed=opts.seed),
        processing_class=AutoTokenizer.from_pretrained(opts.model_dir),
    )
    counter = ForwardCounter(trainer.model)
    if opts.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mib()
    start, start_cpu = time.perf_counter(), time.process_time()
    trainer.train()
    _synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    if opts.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        rise = peak
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        rise = peak - rss_before
    return RunResult(
        arm=arm,
        train_seconds=seconds,
        generate_seconds=counter.generate_seconds,
        train_cpu_seconds=cpu_seconds,
        generate_cpu_seconds=counter.generate_cpu_seconds,
        peak_memory_mib=peak,
        memory_rise_mib=rise,
        forwards_generate=counter.generate_calls,
        forwards_train=counter.other_calls,
        completion_tokens=sum(tokens),
        steps=trainer.state.global_step,
    )


def _spawn(opts: argparse.Namespace, arm: str) -> RunResult:
    command = [sys.executable, os.path.abspath(__file__), "--worker", arm, *opts.forward_argv]
    command += ["--model-dir", opts.model_dir, "--work-dir", opts.work_dir]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{arm} run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    line = [row for row in done.stdout.splitlines() if row.startswith("RESULT ")][-1]
    return RunResult(**json.loads(line[len("RESULT ") :]))


def summarize(results: list[RunResult]) -> dict[str, Any]:
    """Medians per arm and the ratios ours / trl of the medians."""

    def median(arm: str, name: str) -> float:
        return statistics.median(getattr(r, name) for r in results if r.arm == arm)

    fields = ("train_seconds", "non_generate_seconds", "train_cpu_seconds", "non_generate_cpu_seconds")
    fields += ("peak_memory_mib", "memory_rise_mib")
    counts = ("forwards_generate", "forwards_train", "completion_tokens", "steps")
    summary: dict[str, Any] = {arm: {name: median(arm, name) for name in fields + counts} for arm in ARMS}
    summary["ratio"] = {name: summary["ours"][name] / summary["trl"][name] for name in fields}
    for arm in ARMS:
        summary[arm]["tokens_per_second"] = summary[arm]["completion_tokens"] / summary[arm]["train_seconds"]
        summary[arm]["seconds_per_step"] = summary[arm]["train_seconds"] / summary[arm]["steps"]
    summary["pairs"] = sum(r.arm == "trl" for r in results)
    return summary


def format_summary(summary: dict[str, Any], memory_label: str) -> str:
    rows = [
        ("wall time of train() (s)", "train_seconds", ".2f"),
        ("  of which outside generate (s)", "non_generate_seconds", ".2f"),
        ("CPU time of train() (s)", "train_cpu_seconds", ".2f"),
        ("  of which outside generate (s)", "non_generate_cpu_seconds", ".2f"),
        (f"peak memory, {memory_label} (MiB)", "peak_memory_mib", ".1f"),
        ("  rise during train() (MiB)", "memory_rise_mib", ".1f"),
    ]
    lines = [
        f"| median of {summary['pairs']} alternated pairs | TRL dapo | CE-GPPO + ERC + ID + diagnostics | ratio |",
        "|---|---|---|---|",
    ]
    for label, name, fmt in rows:
        trl, ours, ratio = summary["trl"][name], summary["ours"][name], summary["ratio"][name]
        lines.append(f"| {label} | {trl:{fmt}} | {ours:{fmt}} | {ratio:.3f} |")
    for label, name, fmt in (
        ("completion tokens per second", "tokens_per_second", ".0f"),
        ("seconds per optimizer step", "seconds_per_step", ".3f"),
        ("model forwards inside generate", "forwards_generate", ".0f"),
        ("model forwards outside generate", "forwards_train", ".0f"),
    ):
        lines.append(f"| {label} | {summary['trl'][name]:{fmt}} | {summary['ours'][name]:{fmt}} | |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5, help="A B pairs, alternated (default 5)")
    parser.add_argument("--model-config", default="toy-256", choices=sorted(MODEL_CONFIGS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bf16", action="store_true", help="train with bf16=True: bf16 autocast over float32 weights")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (default 8)")
    parser.add_argument("--batch-size", type=int, default=16, help="completions per optimizer step")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--steps-per-generation", type=int, default=4, help="optimizer updates per rollout batch")
    parser.add_argument("--completion-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run on CPU (default 1: CPU time then measures work, not spinning threads)",
    )
    parser.add_argument("--json", help="also write the runs and the summary to this JSON file")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.bf16 and opts.device == "cpu":
        parser.error("--bf16 is meant for --device cuda")
    return opts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    if opts.worker:
        print("RESULT " + json.dumps(asdict(run_arm(opts, opts.worker))), flush=True)
        return {}
    # Options the workers need, minus the parent-only ones.
    skip = {"--pairs", "--json"}
    opts.forward_argv = []
    it = iter(argv)
    for token in it:
        name = token.split("=")[0]
        if name in skip:
            if "=" not in token:
                next(it, None)
            continue
        opts.forward_argv.append(token)
    with tempfile.TemporaryDirectory(prefix="ce-gppo-overhead-") as work_dir:
        opts.work_dir = work_dir
        opts.model_dir = build_model_dir(opts.model_config, os.path.join(work_dir, "model"), opts.seed)
        results = []
        for pair in range(opts.pairs):
            # A B, B A, A B, ...: alternated, and counterbalanced so that neither arm always runs first.
            for arm in ARMS if pair % 2 == 0 else ARMS[::-1]:
                result = _spawn(opts, arm)
                results.append(result)
                print(
                    f"pair {pair + 1}/{opts.pairs} {arm:>4}: train {result.train_seconds:.2f}s "
                    f"(generate {result.generate_seconds:.2f}s), peak {result.peak_memory_mib:.0f} MiB, "
                    f"forwards {result.forwards_generate} in generate + {result.forwards_train} other",
                    flush=True,
                )
    summary = summarize(results)
    memory_label = "torch.cuda.max_memory_allocated" if opts.device == "cuda" else "RSS high-water mark"
    print(f"\nmodel {opts.model_config} on {_device_name(opts.device)}, {'bf16' if opts.bf16 else 'fp32'}")
    print(format_summary(summary, memory_label))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"options": vars(opts), "runs": [asdict(r) for r in results], "summary": summary}, f, indent=2)
    return summary


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores, torch {torch.__version__})"


if __name__ == "__main__":
    main()
