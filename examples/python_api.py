"""CE-GPPO from Python in a few lines: the offline toy model on the arithmetic task, on CPU.

python examples/python_api.py
"""

from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
from ce_gppo_trl.builtin_models import toy_model_path
from ce_gppo_trl.rewards import math_accuracy_reward
from ce_gppo_trl.toy import build_toy_model, make_arithmetic_dataset

args = CEGPPOConfig(
    output_dir="outputs/python-api",
    ce_gppo_beta1=0.5,  # NA&LP gradient scale (pushes entropy down)
    ce_gppo_beta2=1.0,  # PA&LP gradient scale (pushes entropy up)
    per_device_train_batch_size=32,
    num_generations=8,
    steps_per_generation=4,  # 4 optimizer updates per rollout batch: off-policy, so the clip regions are reached
    max_completion_length=8,
    learning_rate=3e-4,
    max_steps=20,
    logging_steps=5,
    use_cpu=True,
    report_to="none",
)
# The quickstart's cached toy model; a hub id or a local model directory works the same way.
model_dir = build_toy_model(toy_model_path())
trainer = CEGPPOTrainer(
    model=model_dir,
    reward_funcs=math_accuracy_reward,
    args=args,
    train_dataset=make_arithmetic_dataset(2048, seed=0),
)
trainer.train()
trainer.save_model()
