"""Every recipe under configs/ parses into the script's dataclasses and passes their validation.

A misspelt or unknown key is an error (TrlParser's `fail_with_unknown_args`), and each dataclass's `__post_init__`
validates the values. This machine has no GPU, so `--use_cpu true` is the one override: transformers refuses
`bf16: true` on a CPU-only machine otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from ce_gppo_trl.cli import make_parser

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if "accelerate" not in p.parts)
ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))
PAPER = sorted(CONFIGS.glob("DeepSeek-R1-Distill-Qwen-*/*.yaml"))


def parse(recipe: Path):
    return make_parser().parse_args_and_config(["--config", str(recipe), "--use_cpu", "true"])


def test_there_are_recipes():
    assert len(RECIPES) >= 10 and len(ACCELERATE) == 5


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_parses_and_validates(recipe):
    raw = yaml.safe_load(recipe.read_text())
    script_args, training_args, model_args = parse(recipe)
    fields = {**vars(script_args), **vars(model_args), **training_args.to_dict()}
    assert set(raw) <= set(fields)
    assert training_args.off_policy, "CE-GPPO/ERC recipes must take several optimizer updates per rollout batch"


@pytest.mark.parametrize("recipe", PAPER, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_paper_recipes_keep_the_paper_settings(recipe):
    _, args, model_args = parse(recipe)
    assert args.learning_rate == (1e-5 if model_args.use_peft else 1e-6)  # LoRA: ~10x the paper's rate
    assert (args.weight_decay, args.max_grad_norm, args.beta) == (0.1, 1.0, 0.0)
    assert (args.num_generations, args.temperature) == (8, 1.0)
    # 8 optimizer updates per rollout batch.
    assert args.steps_per_generation == 8 * args.gradient_accumulation_steps
    # The authors' scripts: verl's 10 warm-up rollout batches (= 80 updates, lr 0 for the first 8), 0.1 x NLL of
    # correct responses, DAPO's filter with one extra generation round, no rollout IS correction, left-truncated
    # prompts (4k at full scale).
    assert (args.lr_scheduler_type.value, args.warmup_steps, args.warmup_rollout_batches) == ("constant", 0, 10)
    assert args.warmup_rollout_batches * args.updates_per_rollout == 80
    assert (args.positive_nll_coef, args.dynamic_sampling, args.dynamic_sampling_max_rounds) == (0.1, True, 1)
    assert not args.vllm_importance_sampling_correction
    assert args.max_prompt_length + args.max_completion_length == args.vllm_max_model_length
    if not model_args.use_peft:
        # On the 8-GPU node the recipe is written for: 16 prompts x 8 = 128 completions per update, 1024 per rollout.
        assert args.per_device_train_batch_size * 8 * args.gradient_accumulation_steps == 128
        assert args.per_device_train_batch_size * 8 * args.steps_per_generation == 1024
        assert args.max_completion_length == 16384 and args.max_prompt_length == 4096
        # total_epochs=10 x 117 batches of 256 generated prompts = 1,170 rollout batches of 8 updates.
        assert args.max_steps == 1170 * args.updates_per_rollout


@pytest.mark.parametrize(
    ("recipe", "beta1", "beta2"),
    [
        ("DeepSeek-R1-Distill-Qwen-1.5B/ce_gppo.yaml", 0.5, 1.0),
        ("DeepSeek-R1-Distill-Qwen-7B/ce_gppo.yaml", 0.75, 1.0),
        ("DeepSeek-R1-Distill-Qwen-1.5B/gppo.yaml", 1.0, 1.0),
        ("DeepSeek-R1-Distill-Qwen-7B/gppo.yaml", 1.0, 1.0),
    ],
)
def test_paper_betas(recipe, beta1, beta2):
    _, args, _ = parse(CONFIGS / recipe)
    assert (args.loss_type, args.ce_gppo_beta1, args.ce_gppo_beta2, args.epsilon, args.epsilon_high) == (
        "ce_gppo",
        beta1,
        beta2,
        0.2,
        0.2,
    )


def test_lora_and_qlora_recipes():
    _, lora, lora_model = parse(CONFIGS / "DeepSeek-R1-Distill-Qwen-1.5B/ce_gppo_lora.yaml")
    _, qlora, qlora_model = parse(CONFIGS / "DeepSeek-R1-Distill-Qwen-7B/ce_gppo_qlora.yaml")
    assert lora_model.use_peft and not lora_model.load_in_4bit
    assert qlora_model.use_peft and qlora_model.load_in_4bit and qlora_model.bnb_4bit_quant_type == "nf4"
    for args in (lora, qlora):
        assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_enable_sleep_mode
        assert 0.2 <= args.vllm_gpu_memory_utilization <= 0.5 and args.activation_checkpointing


@pytest.mark.parametrize("config", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_load(config):
    loaded = load_config_from_file(str(config))  # raises on unknown keys
    expected = {"single_gpu": "NO", "multi_gpu": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
    assert loaded.distributed_type.value == expected.get(config.stem, "FSDP")
    assert loaded.num_processes == (1 if config.stem == "single_gpu" else 8)


@pytest.mark.parametrize(
    ("stem", "schedule"),
    [
        ("entropy_id", "increase_decrease"),
        ("entropy_did", "decrease_increase_decrease"),
        ("entropy_od", "oscillatory_decay"),
    ],
)
def test_flexible_entropy_recipes(stem, schedule):
    _, args, model_args = parse(CONFIGS / "Qwen2.5-Math-7B" / f"{stem}.yaml")
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-Math-7B" and args.prob_clip_schedule == schedule
    assert args.per_device_train_batch_size * 8 * args.gradient_accumulation_steps == 128
    assert args.per_device_train_batch_size * 8 * args.steps_per_generation == 1024
    # Qwen2.5-Math-7B's context is 4k tokens: prompt + response must fit.
    assert args.max_completion_length + 1024 <= args.vllm_max_model_length == 4096
