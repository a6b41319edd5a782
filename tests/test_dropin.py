"""Drop-in: `CEGPPOTrainer` in place of `GRPOTrainer` across a matrix of TRL options (issue 25).

With a TRL loss type, the swapped trainer gives TRL's losses and weights step for step; with `loss_type="ce_gppo"`
and the same options it trains and logs its metrics. The rows cover, pairwise, loss types x `num_iterations` /
`steps_per_generation` x `beta` x PEFT x `importance_sampling_level` x `top_entropy_quantile` x entropy bonus
(static, adaptive) x `mask_truncated_completions` x multiple rewards; resume is its own test.
"""

import math

import pytest
import torch
from peft import LoraConfig
from test_trainer import digit_reward, logged, params, tiny_args
from transformers import set_seed
from trl import GRPOConfig, GRPOTrainer

from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer


def vowel_reward(completions, **kwargs):
    """A second reward, so that reward_weights and the per-function reward metrics are exercised."""
    return [sum(char in "aeiou" for char in completion) / 8 for completion in completions]


LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}

# (TRL loss type, TRL options): every option appears at least once, most with two loss types.
MATRIX = [
    ("grpo", {"num_iterations": 2, "steps_per_generation": 2, "beta": 0.04}),
    ("dapo", {"importance_sampling_level": "sequence", "top_entropy_quantile": 0.5}),
    ("bnpo", {"use_adaptive_entropy": True, "entropy_target": 5.0, "gradient_accumulation_steps": 2}),
    ("dr_grpo", {"entropy_coef": 0.01, "rewards": 2, "mask_truncated_completions": True}),
    ("dapo", {"peft": True, "beta": 0.04, "entropy_coef": 0.01}),
    ("luspo", {"importance_sampling_level": "sequence", "num_iterations": 2, "steps_per_generation": 2}),
    ("cispo", {"epsilon_high": 5.0, "top_entropy_quantile": 0.5, "rewards": 2}),
    ("sapo", {"peft": True, "use_adaptive_entropy": True, "entropy_target": 5.0}),
    ("vespo", {"mask_truncated_completions": True, "beta": 0.04}),
]


def values(trainer, key):
    """A logged metric as a tensor; None (TRL's clip_ratio/low_min when a step has no loss token) as NaN."""
    return torch.tensor([math.nan if value is None else value for value in logged(trainer, key)])


@pytest.fixture
def run(tiny_model_dir, arithmetic_dataset):
    def train(config_class, trainer_class, tmp_path, loss_type, options, resume_from_checkpoint=None):
        options = dict(options)
        rewards = [digit_reward, vowel_reward][: options.pop("rewards", 1)]
        peft_config = LoraConfig(**LORA) if options.pop("peft", False) else None
        if len(rewards) > 1:
            options["reward_weights"] = [1.0, 0.5]
        args = tiny_args(tmp_path, config_class, **{"loss_type": loss_type, "max_steps": 3, **options})
        set_seed(args.seed)
        trainer = trainer_class(
            model=tiny_model_dir,
            reward_funcs=rewards,
            args=args,
            train_dataset=arithmetic_dataset,
            peft_config=peft_config,
        )
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        return trainer

    return train


@pytest.mark.parametrize(("loss_type", "options"), MATRIX, ids=[f"{row[0]}-{'-'.join(row[1])}" for row in MATRIX])
def test_swapped_trainer_matches_trl_and_ce_gppo_trains(run, tmp_path, loss_type, options):
    trl = run(GRPOConfig, GRPOTrainer, tmp_path / "trl", loss_type, options)
    ours = run(CEGPPOConfig, CEGPPOTrainer, tmp_path / "ours", loss_type, options)
    timing = ("epoch", "step", "step_time", "learning_rate")
    keys = [key for key in trl.state.log_history[0] if key not in timing and "time" not in key]
    assert {"loss", "grad_norm", "reward", "entropy"} <= set(keys)
    for key in keys:
        torch.testing.assert_close(values(ours, key), values(trl, key), rtol=1e-5, atol=1e-7, equal_nan=True, msg=key)
    torch.testing.assert_close(params(ours), params(trl), rtol=0, atol=1e-7)

    gppo_options = {**options, "epsilon_high": None} if loss_type == "cispo" else options
    gppo = run(CEGPPOConfig, CEGPPOTrainer, tmp_path / "gppo", "ce_gppo", gppo_options)
    assert all(math.isfinite(value) for value in logged(gppo, "loss"))
    for key in ("clip_ratio/region_mean", "entropy_dynamics/predicted_delta", "entropy"):
        assert len(logged(gppo, key)) == 3, key
    if options.get("entropy_coef") or options.get("use_adaptive_entropy"):
        assert len(logged(gppo, "entropy_coef")) == 3 and len(logged(gppo, "policy_loss")) == 3
    if loss_type in ("grpo", "bnpo", "cispo"):  # rows where off-policy updates reach CE-GPPO's clip regions
        assert max(logged(gppo, "clip_ratio/region_mean")) > 0


def test_resume_restores_trls_adaptive_entropy_state_on_ce_gppo(run, tmp_path):
    options = {"use_adaptive_entropy": True, "entropy_target": 5.0, "steps_per_generation": 2, "max_steps": 4}
    options |= {"save_strategy": "steps", "save_steps": 2, "entropy_coef_delta": 0.01}
    full = run(CEGPPOConfig, CEGPPOTrainer, tmp_path, "ce_gppo", options)
    assert logged(full, "entropy_coef") == pytest.approx([0.01, 0.02, 0.03, 0.04])  # below target: steps up
    assert (tmp_path / "checkpoint-2" / "entropy_ctrl_state.json").exists()  # TRL's own state file
    resumed = run(CEGPPOConfig, CEGPPOTrainer, tmp_path, "ce_gppo", options, str(tmp_path / "checkpoint-2"))
    assert logged(resumed, "entropy_coef") == pytest.approx(logged(full, "entropy_coef"))  # history + 2 new steps
    assert resumed._last_world_entropy == pytest.approx(full._last_world_entropy, rel=1e-5)
    torch.testing.assert_close(params(resumed), params(full), rtol=0, atol=1e-6)
