"""The paths a GPU run takes, checked on CPU against TRL 1.16's call sequence: nothing may be a silent no-op.

On-policy detection, the check that ERC's old entropies come from TRL's old-logps pass, dropout under ERC, Liger,
and the entropy-control state in pushed checkpoints (issue 14). `benchmarks/gpu_check.sh` runs the rest on a GPU.
"""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from test_trainer import digit_reward, logged, score, tiny_args
from transformers import AutoModelForCausalLM, set_seed
from trl import GRPOConfig, GRPOTrainer

from ce_gppo_trl import CEGPPOTrainer
from ce_gppo_trl.control_state import ENTROPY_CONTROL_STATE
from ce_gppo_trl.trainer import active_dropout


def make_trainer(trainer_class, model, dataset, args, **kwargs):
    set_seed(args.seed)
    return trainer_class(model=model, reward_funcs=digit_reward, args=args, train_dataset=dataset, **kwargs)


@pytest.mark.parametrize(
    ("accumulation", "steps_per_generation", "num_iterations", "off_policy"),
    [
        (1, 1, 2, True),  # the second pass over a rollout batch comes after an optimizer step
        (2, 1, 2, False),  # both passes inside one accumulation window: same weights, ratio 1
        (2, 2, 1, False),  # TRL's default steps_per_generation = gradient_accumulation_steps
    ],
)
def test_on_policy_condition_matches_trls_loop(
    tiny_model_dir,
    arithmetic_dataset,
    tmp_path,
    caplog,
    accumulation,
    steps_per_generation,
    num_iterations,
    off_policy,
):
    args = tiny_args(
        tmp_path,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=steps_per_generation,
        num_iterations=num_iterations,
        per_device_train_batch_size=4,
        erc_low=0.95,
        erc_high=1.05,
    )
    assert args.off_policy is off_policy
    with caplog.at_level(logging.WARNING, logger="ce_gppo_trl"):
        trainer = make_trainer(CEGPPOTrainer, tiny_model_dir, arithmetic_dataset, args)
    warned = [record.getMessage() for record in caplog.records if "cannot act in this run" in record.getMessage()]
    assert len(warned) == (0 if off_policy else 1)
    trainer.train()
    clipped = logged(trainer, "clip_ratio/region_mean")
    rho_min, rho_max = logged(trainer, "entropy_ratio/min"), logged(trainer, "entropy_ratio/max")
    if off_policy:  # lr 2e-2 moves the tiny model far: some tokens leave the clip band and the entropy ratio moves
        assert max(clipped) > 0 and min(rho_min) < 1 < max(rho_max)
    else:  # exactly 1: TRL makes no old-logps pass and uses pi_theta.detach() as pi_old
        assert max(clipped) == 0 and set(rho_min) == set(rho_max) == {1.0}


def lora(**overrides):
    # init_lora_weights=False: random B, so the adapters change the outputs from the first step on
    values = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    return LoraConfig(**{"lora_dropout": 0.0, **values, **overrides})


class CapturesTheReferencePass(CEGPPOTrainer):
    """Stands for a TRL release whose old-logps pass the capture misses: the next no-grad pass of `self.model` is
    then captured, which under PEFT with beta > 0 is the reference pass (adapters disabled)."""

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        if isinstance(self._old_entropies, list) and not getattr(self, "_skipped_old_pass", False):
            self._skipped_old_pass = True
            armed, self._old_entropies = self._old_entropies, None
            try:
                return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
            finally:
                self._old_entropies = armed
        return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)


def test_capture_is_checked_against_old_per_token_logps(tiny_model_dir, arithmetic_dataset, tmp_path):
    args = tiny_args(tmp_path, beta=0.04, erc_low=0.95, erc_high=1.05)
    batch = next(iter(make_trainer(CEGPPOTrainer, tiny_model_dir, arithmetic_dataset, args).get_train_dataloader()))
    trainer = make_trainer(CEGPPOTrainer, tiny_model_dir, arithmetic_dataset, args, peft_config=lora())
    trainer.model.train()
    output = trainer._generate_and_score_completions(batch)
    logps, entropies = score(trainer, output)
    torch.testing.assert_close(output["old_entropies"], entropies)
    # The reference pass (adapters off) really differs, so capturing it would be wrong, not harmless
    assert (output["ref_per_token_logps"] - logps).abs().max() > 1e-3
    wrong = make_trainer(CapturesTheReferencePass, tiny_model_dir, arithmetic_dataset, args, peft_config=lora())
    wrong.model.train()
    with pytest.raises(RuntimeError, match="captured the entropies of a scoring pass whose log-probs are not TRL's"):
        wrong._generate_and_score_completions(batch)
    assert wrong._skipped_old_pass and wrong._old_entropies is None


def dropout_model(tiny_model_dir, attention_dropout):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attention_dropout=attention_dropout)


@pytest.mark.parametrize(
    ("attention_dropout", "peft_config", "found"),
    [(0.3, None, "self_attn.attention_dropout=0.3"), (0.0, lora(lora_dropout=0.1), "lora_dropout.default (Dropout")],
)
def test_erc_refuses_dropout_naming_disable_dropout(
    tiny_model_dir, arithmetic_dataset, tmp_path, attention_dropout, peft_config, found
):
    args = tiny_args(tmp_path, erc_low=0.95, erc_high=1.05)
    model = dropout_model(tiny_model_dir, attention_dropout)
    with pytest.raises(ValueError, match="disable_dropout=False is not allowed with ERC") as error:
        make_trainer(CEGPPOTrainer, model, arithmetic_dataset, args, peft_config=peft_config)
    assert found in str(error.value) and "set disable_dropout=True" in str(error.value)


def two_scorings_in_train_mode(trainer, dataset):
    trainer.model.train()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]] * 4)
    inputs = {
        "prompt_ids": ids[:, :3],
        "prompt_mask": torch.ones(4, 3, dtype=torch.long),
        "completion_ids": ids[:, 3:],
        "completion_mask": torch.ones(4, 5, dtype=torch.long),
    }
    torch.manual_seed(0)
    return score(trainer, inputs), score(trainer, inputs)


def test_disable_dropout_also_turns_off_attention_dropout(tiny_model_dir, arithmetic_dataset, tmp_path):
    # TRL's disable_dropout zeroes nn.Dropout modules only: Llama's attention dropout stays on and two train-mode
    # scorings of the same tokens differ, as the old-logps pass and the training pass would
    trl = make_trainer(
        GRPOTrainer,
        dropout_model(tiny_model_dir, 0.3),
        arithmetic_dataset,
        tiny_args(tmp_path / "trl", GRPOConfig, disable_dropout=True),
    )
    (logps_a, entropies_a), (logps_b, entropies_b) = two_scorings_in_train_mode(trl, arithmetic_dataset)
    assert not torch.equal(logps_a, logps_b) and not torch.equal(entropies_a, entropies_b)
    ours = make_trainer(
        CEGPPOTrainer,
        dropout_model(tiny_model_dir, 0.3),
        arithmetic_dataset,
        tiny_args(tmp_path / "ours", disable_dropout=True, erc_low=0.95, erc_high=1.05),
    )
    assert active_dropout(ours.model) == []
    (logps_a, entropies_a), (logps_b, entropies_b) = two_scorings_in_train_mode(ours, arithmetic_dataset)
    assert torch.equal(logps_a, logps_b) and torch.equal(entropies_a, entropies_b)


def test_liger_layer_kernels_reach_trl(tiny_model_dir, arithmetic_dataset, tmp_path):
    # TRL 1.16 keeps Liger's layer kernels and turns its fused linear cross-entropy off; the kernels themselves need
    # a GPU (triton), so training with them is checked by benchmarks/gpu_check.sh --liger
    args = tiny_args(tmp_path, use_liger_kernel=True)
    with pytest.warns(FutureWarning, match="use_liger_kernel=True"):
        trainer = make_trainer(CEGPPOTrainer, tiny_model_dir, arithmetic_dataset, args)
    assert trainer.args.liger_kernel_config == {"fused_linear_cross_entropy": False}


class LocalHub(CEGPPOTrainer):
    """Uploads to a local folder: `_push_from_checkpoint` is where transformers uploads the checkpoint folder."""

    hub: Path

    def _push_from_checkpoint(self, checkpoint_folder):
        shutil.copytree(checkpoint_folder, self.hub / Path(checkpoint_folder).name)


def test_every_pushed_checkpoint_carries_the_control_state(tiny_model_dir, arithmetic_dataset, tmp_path):
    # 2 updates per rollout batch, so that save_steps=2 checkpoints at rollout boundaries (others move to the next).
    args = tiny_args(
        tmp_path / "out",
        prob_clip_schedule="increase_decrease",
        save_strategy="steps",
        save_steps=2,
        max_steps=4,
        steps_per_generation=2,
    )
    trainer = make_trainer(LocalHub, tiny_model_dir, arithmetic_dataset, args)
    trainer.hub = tmp_path / "hub"
    # Set after construction: push_to_hub=True in the config would create a Hub repository in Trainer.__init__
    trainer.args.push_to_hub = True
    trainer.train()
    pushed = sorted(path.name for path in trainer.hub.iterdir())
    assert pushed == ["checkpoint-2", "checkpoint-4"]
    for name in pushed:
        state = json.loads((trainer.hub / name / ENTROPY_CONTROL_STATE).read_text())
        assert state == json.loads((tmp_path / "out" / name / ENTROPY_CONTROL_STATE).read_text())
        assert set(state["callbacks"]) == {"ProbClipScheduleCallback.0"}
