"""Run under `accelerate launch --num_processes 2`: the measured-gain entropy controller (with the entropy attribution
on every step, to check the meter against it) on two processes.

Usage: controller_measured_ddp.py MODEL_DIR OUTPUT_DIR. Each rank writes `control_rank{N}.json` (per step, the
coefficient the controller set and its measured state); the main process writes `log_history.json`.
"""

import dataclasses
import json
import sys

from transformers import TrainerCallback, set_seed

from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
from ce_gppo_trl.callbacks import EntropyControllerCallback
from ce_gppo_trl.toy import make_arithmetic_dataset


def digit_reward(completions, **kwargs):
    return [sum(char.isdigit() for char in completion) / 8 for completion in completions]


class Record(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.steps = trainer, []

    def on_step_end(self, args, state, control, **kwargs):
        controller = next(
            c for c in self.trainer.callback_handler.callbacks if isinstance(c, EntropyControllerCallback)
        )
        self.steps.append(
            {"coefficient": self.trainer.entropy_control_coef, "measured": dataclasses.asdict(controller.measured)}
        )


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
        entropy_controller=True,
        entropy_controller_target=5.0,
        entropy_controller_measure_steps=1,
        entropy_attribution_steps=1,
    )
    set_seed(0)
    trainer = CEGPPOTrainer(
        model=model_dir, reward_funcs=digit_reward, args=args, train_dataset=make_arithmetic_dataset(64)
    )
    if trainer.accelerator.num_processes != 2:
        raise RuntimeError(f"expected 2 processes, got {trainer.accelerator.num_processes}")
    record = Record(trainer)
    trainer.add_callback(record)  # after the controller: reads what it decided at this step's end
    trainer.train()
    with open(f"{output_dir}/control_rank{trainer.accelerator.process_index}.json", "w") as f:
        json.dump(record.steps, f)
    if trainer.accelerator.is_main_process:
        with open(f"{output_dir}/log_history.json", "w") as f:
            json.dump(trainer.state.log_history, f)
    trainer.end()  # every rank leaves the gloo group together (see CEGPPOTrainer.end)


if __name__ == "__main__":
    main(*sys.argv[1:])
