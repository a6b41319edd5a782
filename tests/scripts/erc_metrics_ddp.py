"""Run under `accelerate launch --num_processes 2`: ERC training whose ranks also save their local entropy ratios,
with the entropy attribution on every other step (which must not change training).

Usage: erc_metrics_ddp.py MODEL_DIR OUTPUT_DIR. Each rank writes `rho_rank{N}.pt` (the list, per loss call, of its
completion tokens' entropy ratios); the main process writes `log_history.pt`.
"""

import sys

import torch
from transformers import set_seed

from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
from ce_gppo_trl.toy import make_arithmetic_dataset


class RecordingTrainer(CEGPPOTrainer):
    def _log_loss_metrics(self, mode, step):
        self.local_ratios.append(step.entropy_ratio[step.mask.bool()].detach().clone())
        super()._log_loss_metrics(mode, step)


def digit_reward(completions, **kwargs):
    return [sum(char.isdigit() for char in completion) / 8 for completion in completions]


def main(model_dir: str, output_dir: str) -> None:
    args = CEGPPOConfig(
        output_dir=output_dir,
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        num_generations=4,
        steps_per_generation=4,
        max_completion_length=8,
        learning_rate=2e-2,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        erc_low=0.99,
        erc_high=1.01,
        entropy_attribution_steps=2,
    )
    set_seed(0)
    trainer = RecordingTrainer(
        model=model_dir, reward_funcs=digit_reward, args=args, train_dataset=make_arithmetic_dataset(64)
    )
    if trainer.accelerator.num_processes != 2:
        raise RuntimeError(f"expected 2 processes, got {trainer.accelerator.num_processes}")
    trainer.local_ratios = []
    trainer.train()
    torch.save(trainer.local_ratios, f"{output_dir}/rho_rank{trainer.accelerator.process_index}.pt")
    if trainer.accelerator.is_main_process:
        torch.save(trainer.state.log_history, f"{output_dir}/log_history.pt")
    trainer.end()  # every rank leaves the gloo group together (see CEGPPOTrainer.end)


if __name__ == "__main__":
    main(*sys.argv[1:])
