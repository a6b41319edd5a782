"""End-to-end check of the GPU path on one GPU: bf16, vLLM colocate, LoRA, and CE-GPPO + ERC really acting.

`benchmarks/gpu_check.sh` runs it twice (arm `ours`, then arm `trl`) and then `benchmarks/overhead.py`. One arm per
process, so that each vLLM engine gets the whole GPU.

- Arm `ours`: `CEGPPOTrainer`, `loss_type="ce_gppo"` (0.5 / 1.0), `clip_ratio_c=10`, ERC (0.95 / 1.05). It checks,
  and exits with status 1 otherwise, that the run was off-policy, that tokens fell in the CE-GPPO clip regions and
  outside the ERC band at some step (`clip_ratio/region_mean`, `entropy_ratio/clip_*_mean` > 0, entropy ratios
  away from 1), that the first update of each rollout batch, still on-policy, masks or clips under 1% of the tokens
  (bf16 noise between TRL's scoring and training passes; every update's fractions are printed; the LM head runs in
  float32, `cast_lm_head_to_fp32`), that every loss and gradient norm is finite, and that vLLM (its
  importance-sampling metrics), bf16 weights, LoRA (only adapter weights trainable) and, with `--liger`, Liger's
  layer kernels were in use; with vLLM, that the adapter-only sync ran (`vllm_lora_sync: adapter`) and kept the
  engine's log-probs within `vllm_logp_difference_bound` of the trainer's at every rollout batch. `--qlora` puts a
  bitsandbytes 4-bit base under the adapters and vLLM's sleep mode, as the QLoRA recipe (results in
  `ours-qlora.json`), and checks that the base is 4-bit.
- Arm `trl`: `trl.GRPOTrainer(loss_type="dapo")` with the same model, data, batch layout and seed: the baseline of
  the step time. `--compare DIR` prints both arms' median step time and peak memory and their ratio.

The model is `--model` (a Hub id or a local directory; default Qwen/Qwen2.5-0.5B-Instruct). If it cannot be loaded
(no internet), or with `--model random`, a random-weight model is built from a published config
(`--fallback-config`, from `benchmarks/overhead.py`) with the toy tokenizer and a wide init
(`--fallback-init-range`), so that its next-token distributions are peaked and their entropy can move; the reward is
dense (`overhead.token_parity_reward`), so advantages differ within every group on any model.

    python benchmarks/gpu_check.py --arm ours --out outputs/gpu_check
    python benchmarks/gpu_check.py --smoke --out /tmp/smoke     # CPU, tiny, no vLLM / bf16: the script's own test
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from typing import Any

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
HERE = os.path.dirname(os.path.abspath(__file__))


def _overhead() -> Any:
    """`benchmarks/overhead.py` as a module (its random-model builder and dense reward are reused here)."""
    spec = importlib.util.spec_from_file_location("benchmarks_overhead", os.path.join(HERE, "overhead.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def resolve_model(opts: argparse.Namespace) -> tuple[str, str]:
    """The model directory or Hub id to train, and how it was obtained ("hub or local" or "random weights")."""
    if opts.model != "random":
        try:
            from transformers import AutoConfig, AutoTokenizer

            AutoConfig.from_pretrained(opts.model)
            AutoTokenizer.from_pretrained(opts.model)
            return opts.model, "hub or local"
        except (OSError, ValueError) as error:
            print(f"gpu_check: cannot load {opts.model!r} ({type(error).__name__}); using random weights", flush=True)
    # At transformers' default initializer_range (0.02) a random model's next-token distribution is almost uniform
    # (entropy log V = 11.9 nats over Qwen's 152k tokens) and its entropy cannot move: ERC would never act. A wider
    # init gives peaked distributions (0.12 on Qwen2.5-0.5B: entropy 1.5 to 7 nats) that LoRA updates move.
    name = f"{opts.fallback_config}-init{opts.fallback_init_range:g}"
    path = os.path.join(opts.out, f"model-random-{name}")
    if not os.path.exists(os.path.join(path, "config.json")):
        overhead = _overhead()
        spec = {**overhead.MODEL_CONFIGS[opts.fallback_config], "initializer_range": opts.fallback_init_range}
        overhead.MODEL_CONFIGS[name] = spec
        overhead.build_model_dir(name, path, seed=opts.seed)
    return path, f"random weights, {name} config"


def config_kwargs(opts: argparse.Namespace, arm: str) -> dict[str, Any]:
    """Config fields of one arm; everything but the loss settings is shared."""
    shared: dict[str, Any] = {
        "output_dir": os.path.join(opts.out, f"run-{arm}{'-qlora' if opts.qlora else ''}"),
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "seed": opts.seed,
        "use_cpu": opts.device == "cpu",
        "bf16": opts.bf16,
        "model_init_kwargs": {"dtype": "bfloat16" if opts.bf16 else "float32"},
        "per_device_train_batch_size": opts.batch_size,
        "gradient_accumulation_steps": opts.accumulation,
        # Several optimizer updates per rollout batch: without them CE-GPPO and ERC cannot act (issue 14)
        "steps_per_generation": opts.accumulation * opts.updates_per_rollout,
        "num_generations": opts.num_generations,
        "max_completion_length": opts.completion_length,
        "temperature": 1.0,
        "learning_rate": opts.learning_rate,
        "max_steps": opts.steps,
        "beta": 0.0,
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "loss_type": "dapo",
        "disable_dropout": True,
        "use_liger_kernel": opts.liger,
        # float32 logits, so that the first update's ERC and clip compare the same numbers (docs/methods/erc.md)
        "cast_lm_head_to_fp32": True,
    }
    if opts.vllm:
        shared.update(
            use_vllm=True,
            vllm_mode="colocate",
            vllm_gpu_memory_utilization=opts.vllm_gpu_memory_utilization,
            vllm_max_model_length=1024,
            vllm_enable_sleep_mode=opts.qlora,  # as the QLoRA recipe: the adapter sync's level-1 sleep and wake-up
        )
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
    }


def _values(log_history: list[dict[str, Any]], key: str) -> list[float]:
    return [entry[key] for entry in log_history if key in entry]


def first_update_noise(log_history: list[dict[str, Any]], updates_per_rollout: int) -> list[float]:
    """ERC-masked plus clipped fraction of each rollout batch's first update, where the policy is still the rollout
    policy and any token outside the bands is bf16 noise between the scoring and the training pass."""
    erc = _erc_fractions(log_history)
    clip = _values(log_history, "clip_ratio/region_mean")
    return [erc[step] + clip[step] for step in range(0, min(len(erc), len(clip)), updates_per_rollout)]


def _erc_fractions(log_history: list[dict[str, Any]]) -> list[float]:
    low, high = (_values(log_history, f"entropy_ratio/clip_{side}_mean") for side in ("low", "high"))
    return [a + b for a, b in zip(low, high, strict=True)]


def check_run(log_history: list[dict[str, Any]], facts: dict[str, Any], opts: argparse.Namespace) -> dict[str, bool]:
    """The checks of arm `ours`: name -> passed."""
    clip = _values(log_history, "clip_ratio/region_mean")
    erc = _erc_fractions(log_history)
    noise = first_update_noise(log_history, opts.updates_per_rollout)
    for step, (masked, clipped) in enumerate(zip(erc, clip, strict=False)):
        first = " (first of its rollout batch: bound 1%)" if step % opts.updates_per_rollout == 0 else ""
        print(f"gpu_check: update {step}: ERC-masked {masked:.4%}, clipped {clipped:.4%}{first}", flush=True)
    rho_min, rho_max = _values(log_history, "entropy_ratio/min"), _values(log_history, "entropy_ratio/max")
    finite = _values(log_history, "loss") + _values(log_history, "grad_norm")
    checks = {
        "off-policy config (no 'cannot act' warning)": facts["off_policy"],
        "CE-GPPO clip regions reached: max clip_ratio/region_mean > 0": bool(clip) and max(clip) > 0,
        "ERC masks tokens: max entropy_ratio/clip_low_mean + clip_high_mean > 0": bool(erc) and max(erc) > 0,
        "entropy ratios away from 1 (old entropies from TRL's old-logps pass)": bool(rho_min)
        and (min(rho_min) < 1 or max(rho_max) > 1),
        "first update of each rollout: ERC-masked + clipped fraction < 1%": bool(noise) and max(noise) < 0.01,
        "every loss and grad_norm finite": bool(finite) and all(math.isfinite(value) for value in finite),
        f"{opts.steps} optimizer steps done": facts["steps"] == opts.steps,
        "LoRA: a PeftModel with only adapter weights trainable": facts["lora_only"],
    }
    if opts.vllm:
        checks["vLLM colocate generated (sampling/importance_sampling_ratio/mean logged)"] = bool(
            _values(log_history, "sampling/importance_sampling_ratio/mean")
        )
        checks["vLLM synced by adapter only (vllm_lora_sync: adapter)"] = facts["sync"] == "AdapterSyncVLLMGeneration"
        gaps = _values(log_history, "sampling/sampling_logp_difference/mean")
        checks[f"engine in sync: sampling_logp_difference/mean < {facts['logp_bound']} at every rollout"] = (
            bool(gaps) and max(gaps) < facts["logp_bound"]
        )
    if opts.qlora:
        checks["QLoRA: the trainer's base is bitsandbytes 4-bit"] = facts["base_dtype"] == "torch.uint8"
    elif opts.bf16:
        checks["base weights in bfloat16"] = facts["base_dtype"] == "torch.bfloat16"
    if opts.liger:
        checks["Liger layer kernels on, fused linear cross-entropy off"] = facts["liger_config"] == {
            "fused_linear_cross_entropy": False
        }
    return checks


def run_arm(opts: argparse.Namespace, arm: str) -> int:
    """Train one arm, write `<out>/<arm>.json`, print the checks (arm `ours`); return the exit status."""
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
    from ce_gppo_trl.toy import make_arithmetic_dataset

    model, source = resolve_model(opts)
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if arm == "trl" else (CEGPPOConfig, CEGPPOTrainer)
    args = config_class(**config_kwargs(opts, arm))
    set_seed(opts.seed)
    completions_per_step = opts.batch_size * opts.accumulation
    trainer = trainer_class(
        model=model,
        reward_funcs=_overhead().token_parity_reward,
        args=args,
        train_dataset=make_arithmetic_dataset(completions_per_step * opts.steps, seed=opts.seed),
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"),
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16 if opts.bf16 else torch.float32,
        )
        if opts.qlora
        else None,
    )
    if opts.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    # A decoder layer's weight: with tied embeddings, cast_lm_head_to_fp32 makes the embedding float32
    base = next(p for name, p in trainer.model.named_parameters() if "lora_" not in name and ".layers." in name)
    facts = {
        "off_policy": bool(getattr(args, "off_policy", True)),
        "steps": trainer.state.global_step,
        "lora_only": bool(trainable) and all("lora_" in name for name in trainable),
        "base_dtype": str(base.dtype),
        "liger_config": args.liger_kernel_config,
        "sync": type(getattr(trainer, "vllm_generation", None)).__name__,
        "logp_bound": getattr(args, "vllm_logp_difference_bound", None) or 0.1,
    }
    step_times = _values(trainer.state.log_history, "step_time")
    result = {
        "arm": arm,
        "model": model,
        "model_source": source,
        "device": torch.cuda.get_device_name() if opts.device == "cuda" else "cpu",
        "options": {key: value for key, value in vars(opts).items() if key != "func"},
        "train_seconds": seconds,
        # The first steps include vLLM's and CUDA's warm-up; the median is over the rest.
        "median_step_seconds": statistics.median(step_times[2:] or step_times) if step_times else None,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if opts.device == "cuda" else None,
        "facts": facts,
        "log_history": trainer.state.log_history,
    }
    status = 0
    if arm == "ours":
        result["checks"] = check_run(trainer.state.log_history, facts, opts)
        for name, passed in result["checks"].items():
            print(f"gpu_check: {'PASS' if passed else 'FAIL'}  {name}", flush=True)
        status = 0 if all(result["checks"].values()) else 1
    with open(os.path.join(opts.out, f"{arm}{'-qlora' if opts.qlora else ''}.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    return status


def compare(out: str) -> str:
    """Median step time and peak memory of both arms, as a Markdown table."""
    arms = {}
    for arm in ("trl", "ours"):
        with open(os.path.join(out, f"{arm}.json")) as f:
            arms[arm] = json.load(f)
    lines = [
        f"model {arms['ours']['model']} ({arms['ours']['model_source']}) on {arms['ours']['device']}",
        "| | TRL dapo | CE-GPPO + dual clip + ERC | ratio |",
        "|---|---|---|---|",
    ]
    for label, key in (
        ("median step time (s)", "median_step_seconds"),
        ("wall time of train() (s)", "train_seconds"),
        ("peak memory (MiB)", "peak_memory_mib"),
    ):
        trl, ours = arms["trl"][key], arms["ours"][key]
        if trl is None or ours is None:
            continue
        lines.append(f"| {label} | {trl:.3f} | {ours:.3f} | {ours / trl:.3f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=("ours", "trl"), default="ours")
    parser.add_argument("--compare", metavar="DIR", help="print the table of both arms' results in DIR and exit")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub id, directory or 'random' ({DEFAULT_MODEL})")
    parser.add_argument("--fallback-config", default="qwen2.5-0.5b", help="overhead.MODEL_CONFIGS entry")
    parser.add_argument(
        "--fallback-init-range", type=float, default=0.12, help="initializer_range of the random-weight model"
    )
    parser.add_argument("--out", default="outputs/gpu_check", help="results folder")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--no-vllm", dest="vllm", action="store_false", help="generate with transformers")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32")
    parser.add_argument("--liger", action="store_true", help="use_liger_kernel=True (needs liger-kernel)")
    parser.add_argument("--qlora", action="store_true", help="4-bit (bitsandbytes nf4) base under the LoRA adapters")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps (default 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="completions per micro-batch")
    parser.add_argument("--accumulation", type=int, default=2, help="gradient_accumulation_steps")
    parser.add_argument("--updates-per-rollout", type=int, default=4, help="optimizer updates per rollout batch")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="LoRA learning rate (default 5e-4)")
    parser.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, tiny random model, no vLLM, float32, 4 steps: runs every part of this script that needs no GPU",
    )
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.device, opts.vllm, opts.bf16, opts.model, opts.fallback_config = "cpu", False, False, "random", "toy-256"
        opts.fallback_init_range = 0.02  # 26 tokens: peaked enough at the default init
        opts.steps, opts.batch_size, opts.num_generations, opts.completion_length = 4, 8, 4, 8
        opts.learning_rate = 2e-2
    if opts.device == "cpu" and (opts.vllm or opts.bf16):
        parser.error("--device cpu needs --no-vllm and --no-bf16 (or --smoke)")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.compare:
        print(compare(opts.compare))
        return 0
    os.makedirs(opts.out, exist_ok=True)
    return run_arm(opts, opts.arm)


if __name__ == "__main__":
    sys.exit(main())
