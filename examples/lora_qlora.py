"""LoRA and QLoRA fine-tuning with CE-GPPO on a single GPU, from Python.

The recipes configs/DeepSeek-R1-Distill-Qwen-1.5B/ce_gppo_lora.yaml and configs/DeepSeek-R1-Distill-Qwen-7B/
ce_gppo_qlora.yaml do the same from the command line (`ce-gppo train --config ...`). This file shows the two objects
that make the difference, a `peft.LoraConfig` and, for QLoRA, a 4-bit `BitsAndBytesConfig`:

    python examples/lora_qlora.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B            # LoRA
    python examples/lora_qlora.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --qlora      # QLoRA (4-bit)
"""

import argparse

import torch
from peft import LoraConfig
from transformers import BitsAndBytesConfig

from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
from ce_gppo_trl.data import load_math_dataset
from ce_gppo_trl.rewards import math_accuracy_reward

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
parser.add_argument("--dataset", default="KlearReasoner-MathSub-30K")
parser.add_argument("--qlora", action="store_true", help="Load the base model in 4-bit NF4 (QLoRA).")
parser.add_argument("--use_vllm", action="store_true", help="Generate with vLLM colocated (pip install vllm).")
cli = parser.parse_args()

args = CEGPPOConfig(
    output_dir=f"outputs/{cli.model.split('/')[-1]}-CE-GPPO-{'QLoRA' if cli.qlora else 'LoRA'}",
    ce_gppo_beta1=0.75 if "7B" in cli.model else 0.5,
    ce_gppo_beta2=1.0,
    learning_rate=1e-5,  # LoRA: ~10x the full fine-tuning rate of the paper (1e-6)
    per_device_train_batch_size=1,
    gradient_accumulation_steps=32,  # 32 completions (4 prompts x 8) per optimizer update
    steps_per_generation=256,  # 256 completions per rollout batch: 8 optimizer updates each
    num_generations=8,
    max_completion_length=4096 if cli.qlora else 8192,
    activation_checkpointing=True,
    bf16=True,
    model_init_kwargs={"dtype": torch.bfloat16},
    use_vllm=cli.use_vllm,
    vllm_mode="colocate",
    vllm_gpu_memory_utilization=0.35,
    vllm_enable_sleep_mode=True,
    max_steps=4000,
    logging_steps=8,
)
quantization = None
if cli.qlora:
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
trainer = CEGPPOTrainer(
    model=cli.model,
    reward_funcs=math_accuracy_reward,
    args=args,
    train_dataset=load_math_dataset(cli.dataset),
    peft_config=LoraConfig(r=16 if cli.qlora else 32, lora_alpha=32 if cli.qlora else 64, target_modules="all-linear"),
    quantization_config=quantization,
)
trainer.train()
trainer.save_model()  # saves the adapter only; load with peft.AutoPeftModelForCausalLM.from_pretrained(output_dir)
