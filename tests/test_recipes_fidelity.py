"""The authors' training scripts, setting by setting: NLL on correct responses, dynamic sampling, prompt cap, warm-up.

The pure pieces (`losses.positive_nll_loss`, `sampling`, `schedules.rollout_warmup_factor`) are checked on hand-made
tensors; the trainer glue on a tiny random model (conftest.py) with a scripted reward whose zero-variance groups are
known in advance. The 2-process run of dynamic sampling is in test_launch.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers import set_seed

from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
from ce_gppo_trl.losses import positive_nll_loss
from ce_gppo_trl.sampling import concat_rollouts, group_has_signal, select_rows, total_rewards, truncate_left
from ce_gppo_trl.schedules import rollout_warmup_factor


def parity_reward(completions, solution, **kwargs):
    """1.0 for every completion of a prompt with an even answer (a zero-variance group), the share of digits
    otherwise (mixed rewards in practice for a random model)."""
    return [
        1.0 if int(answer) % 2 == 0 else sum(char.isdigit() for char in completion) / 8
        for completion, answer in zip(completions, solution, strict=True)
    ]


def constant_reward(completions, **kwargs):
    return [0.0] * len(completions)


def make_trainer(model_dir, dataset, tmp_path, reward=parity_reward, **overrides):
    values = {
        "output_dir": str(tmp_path),
        "use_cpu": True,
        "report_to": "none",
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "steps_per_generation": 4,
        "max_completion_length": 8,
        "learning_rate": 2e-2,
        "max_steps": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "beta": 0.0,
        "bf16": False,  # GRPOConfig's default bf16 autocast would round the gradients compared below
        **overrides,
    }
    set_seed(0)
    trainer = CEGPPOTrainer(model=model_dir, reward_funcs=reward, args=CEGPPOConfig(**values), train_dataset=dataset)
    trainer.model.train()
    return trainer


def first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


# The NLL term on correct responses.


def test_positive_nll_gradient_is_the_nll_of_correct_responses_only():
    generator = torch.Generator().manual_seed(0)
    logps = torch.randn(5, 7, generator=generator).requires_grad_()
    mask = (torch.rand(5, 7, generator=generator) > 0.3).float()
    positive = torch.tensor([True, False, True, False, True])
    loss = positive_nll_loss(logps, mask, positive)
    (grad,) = torch.autograd.grad(loss, logps)
    # Reference: -mean log p over the correct responses' tokens, computed on those rows alone.
    reference_logps = logps.detach()[positive].requires_grad_()
    reference = -(reference_logps * mask[positive]).sum() / mask[positive].sum()
    (reference_grad,) = torch.autograd.grad(reference, reference_logps)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(grad[positive], reference_grad)
    assert torch.equal(grad[~positive], torch.zeros_like(grad[~positive]))
    # No correct response in the micro-batch: zero, as the authors' `torch.tensor(0)`.
    assert positive_nll_loss(logps, mask, torch.zeros(5, dtype=torch.bool)).item() == 0.0


def test_trainer_adds_coef_times_the_nll_of_correct_responses(tiny_model_dir, arithmetic_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, arithmetic_dataset, tmp_path, positive_nll_coef=0.1)
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._prepare_inputs(first_batch(trainer))
    correct = inputs["rewards"] > 0
    assert 0 < correct.sum() < len(correct)  # both kinds in the micro-batch

    def grads(coef):
        trainer.args.positive_nll_coef = coef
        trainer.model.zero_grad()
        trainer._compute_policy_loss(trainer.model, inputs).backward()
        return [p.grad.clone() for p in trainer.model.parameters()]

    with_nll, without = grads(0.1), grads(0.0)
    trainer.args.positive_nll_coef = 0.1
    # Reference: 0.1 x the mean NLL of the correct completions' tokens, from their rows alone.
    trainer.model.zero_grad()
    rows = {key: inputs[key][correct] for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model,
        torch.cat([rows["prompt_ids"], rows["completion_ids"]], 1),
        torch.cat([rows["prompt_mask"], rows["completion_mask"]], 1),
        rows["completion_ids"].size(1),
    )
    mask = rows["completion_mask"].float()
    (0.1 * -(logps * mask).sum() / mask.sum()).backward()
    for total, policy, parameter in zip(with_nll, without, trainer.model.parameters(), strict=True):
        torch.testing.assert_close(total - policy, parameter.grad, rtol=1e-4, atol=1e-7)
    assert trainer._metrics["train"]["positive_nll"]


def math_accuracy_reward(completions, **kwargs):
    """Named as `ce_gppo_trl.rewards.math_accuracy_reward` logs: every answer wrong."""
    return [0.0] * len(completions)


def format_reward(completions, **kwargs):
    """Every answer well formatted."""
    return [1.0] * len(completions)


def nll_of_first_update(trainer):
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._prepare_inputs(first_batch(trainer))
    trainer._compute_policy_loss(trainer.model, inputs)
    return inputs, trainer._metrics["train"]["positive_nll"][-1]


def test_nll_term_keys_on_the_accuracy_reward_not_the_total(tiny_model_dir, arithmetic_dataset, tmp_path):
    rewards = [math_accuracy_reward, format_reward]
    # Well formatted and wrong: total reward 1 > 0 for every completion, but none is correct, so none gets the term.
    trainer = make_trainer(tiny_model_dir, arithmetic_dataset, tmp_path, reward=rewards, positive_nll_coef=0.1)
    inputs, nll = nll_of_first_update(trainer)
    assert (inputs["rewards"] > 0).all() and not (inputs["positive_nll_rewards"] > 0).any()
    assert nll == 0.0
    # A named reward marks correctness instead: here every response counts.
    named = make_trainer(
        tiny_model_dir,
        arithmetic_dataset,
        tmp_path,
        reward=rewards,
        positive_nll_coef=0.1,
        positive_nll_reward="format_reward",
    )
    assert nll_of_first_update(named)[1] > 0
    with pytest.raises(ValueError, match=r"positive_nll_reward='length' is not allowed.*'format_reward'"):
        make_trainer(
            tiny_model_dir,
            arithmetic_dataset,
            tmp_path,
            reward=rewards,
            positive_nll_coef=0.1,
            positive_nll_reward="length",
        )
    with pytest.raises(ValueError, match="positive_nll_reward=None is not allowed"):
        make_trainer(
            tiny_model_dir,
            arithmetic_dataset,
            tmp_path,
            reward=[format_reward, constant_reward],
            positive_nll_coef=0.1,
        )


# Dynamic sampling.


def test_group_filter_and_joining_rollouts():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, float("nan"), 0.5, 0.5, float("nan")])
    assert group_has_signal(rewards, 2).tolist() == [False, True, False, False]
    assert group_has_signal(rewards, 4).tolist() == [True, False]
    with pytest.raises(ValueError, match="num_generations=3"):
        group_has_signal(rewards, 3)
    weights = torch.tensor([1.0, 0.5])
    assert total_rewards(torch.tensor([[1.0, 2.0], [float("nan"), 2.0]]), weights).tolist() == [2.0, 1.0]

    short = {
        "prompt_ids": torch.tensor([[5, 6], [7, 8]]),
        "prompt_mask": torch.ones(2, 2, dtype=torch.long),
        "completion_ids": torch.tensor([[1], [2]]),
        "completion_mask": torch.ones(2, 1, dtype=torch.long),
        "advantages": torch.tensor([0.5, -0.5]),
        "num_items_in_batch": torch.tensor(2),
    }
    wide = {
        "prompt_ids": torch.tensor([[4, 5, 6]]),
        "prompt_mask": torch.ones(1, 3, dtype=torch.long),
        "completion_ids": torch.tensor([[3, 4]]),
        "completion_mask": torch.ones(1, 2, dtype=torch.long),
        "advantages": torch.tensor([1.0]),
        "num_items_in_batch": torch.tensor(2),
    }
    joined = concat_rollouts([select_rows(short, torch.tensor([1])), wide], pad_token_id=0)
    assert joined["prompt_ids"].tolist() == [[0, 7, 8], [4, 5, 6]]  # prompts left-padded
    assert joined["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert joined["completion_ids"].tolist() == [[2, 0], [3, 4]]  # completions right-padded
    assert joined["completion_mask"].tolist() == [[1, 0], [1, 1]]
    assert joined["advantages"].tolist() == [-0.5, 1.0] and "num_items_in_batch" not in joined
    with pytest.raises(ValueError, match="pixel_values"):
        select_rows({**short, "pixel_values": torch.zeros(2, 3)}, torch.tensor([0]))


def groups_of(values, size):
    return values.view(-1, size)


def test_dynamic_sampling_refills_with_mixed_groups_only(tiny_model_dir, arithmetic_dataset, tmp_path):
    trainer = make_trainer(
        tiny_model_dir, arithmetic_dataset, tmp_path, dynamic_sampling=True, dynamic_sampling_max_rounds=8
    )
    batch = first_batch(trainer)
    answers = torch.tensor([int(row["solution"]) for row in batch])
    assert (answers % 2 == 0).any()  # the first round really has zero-variance groups to drop
    output = trainer._rollout(batch)
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items() if "dynamic" in key}
    assert metrics["dynamic_sampling/groups_dropped"] >= (answers % 2 == 0).sum().item() / 4
    assert metrics["dynamic_sampling/groups_masked"] == 0 and metrics["dynamic_sampling/rounds"] >= 1
    assert metrics["dynamic_sampling/groups_refilled"] > 0
    # Every group that reaches the loss has mixed rewards and non-zero advantages; the batch keeps its size.
    assert len(output["rewards"]) == len(batch) == output["completion_ids"].size(0)
    assert group_has_signal(output["rewards"], 4).all()
    assert (groups_of(output["advantages"], 4).abs().amax(dim=1) > 0).all()
    mask = output["completion_mask"] * output.get("tool_mask", 1)
    assert output["num_items_in_batch"].item() == mask.sum().item()
    # A full training run with the filter on, through TRL's shuffling and splitting.
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "dynamic_sampling/rounds" in entry]
    assert logged and all(entry["dynamic_sampling/groups_masked"] == 0 for entry in logged)


def test_dynamic_sampling_logs_the_rollout_batchs_own_reward(
    tiny_model_dir, arithmetic_dataset, tmp_path, monkeypatch
):
    # Issue 33: TRL logs reward/* once per generation round; the refill rounds' fresh prompts must not enter the mean.
    trainer = make_trainer(
        tiny_model_dir, arithmetic_dataset, tmp_path, dynamic_sampling=True, dynamic_sampling_max_rounds=8
    )
    rounds, scored_round = [], trainer._scored_round
    monkeypatch.setattr(trainer, "_scored_round", lambda inputs: rounds.append(scored_round(inputs)) or rounds[-1])
    trainer._rollout(first_batch(trainer))
    metrics = trainer._metrics["train"]
    assert len(rounds) > 1 and metrics["dynamic_sampling/rounds"] == [len(rounds) - 1]
    assert metrics["reward"] == [pytest.approx(rounds[0]["rewards"].mean().item())]
    assert metrics["rewards/parity_reward/mean"] == metrics["reward"]
    assert len(metrics["completions/mean_length"]) == 1


def test_dynamic_sampling_masks_what_it_cannot_refill(tiny_model_dir, arithmetic_dataset, tmp_path):
    trainer = make_trainer(
        tiny_model_dir,
        arithmetic_dataset,
        tmp_path,
        reward=constant_reward,
        dynamic_sampling=True,
        dynamic_sampling_max_rounds=2,
    )
    output = trainer._rollout(first_batch(trainer))
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items() if "dynamic" in key}
    groups = trainer.args.per_device_train_batch_size * trainer.args.steps_per_generation // 4
    assert metrics["dynamic_sampling/rounds"] == 2  # bounded: it stopped after dynamic_sampling_max_rounds
    assert metrics["dynamic_sampling/groups_dropped"] == 3 * groups  # every group of the 3 rounds
    assert metrics["dynamic_sampling/groups_masked"] == groups and metrics["dynamic_sampling/groups_refilled"] == 0
    # The slots are filled with masked completions: nothing reaches the loss or its token count.
    assert output["completion_mask"].sum() == 0 and output["num_items_in_batch"].item() == 0
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.zero_grad()
    loss = trainer._compute_policy_loss(trainer.model, {**output, "advantages": output["advantages"]})
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())


# Prompt cap and warm-up.


def test_prompt_cap_truncates_on_the_left(tiny_model_dir, arithmetic_dataset, tmp_path):
    assert truncate_left([[1, 2, 3, 4], [5]], 3) == [[2, 3, 4], [5]]
    prompts = [row["prompt"] for row in arithmetic_dataset.select(range(4))]
    uncapped = make_trainer(tiny_model_dir, arithmetic_dataset, tmp_path / "a")._tokenize_prompts(prompts)[0]
    capped = make_trainer(tiny_model_dir, arithmetic_dataset, tmp_path / "b", max_prompt_length=2)
    assert max(len(ids) for ids in uncapped) > 2
    assert capped._tokenize_prompts(prompts)[0] == [list(ids[-2:]) for ids in uncapped]


def verl_learning_rates(num_updates, updates_per_rollout, warmup_rollouts, lr):
    """verl's `get_constant_schedule_with_warmup` (lr x min(1, k / warmup)), stepped once per rollout batch."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1, float(k) / float(max(1, warmup_rollouts)))
    )
    rates = []
    for update in range(num_updates):
        rates.append(optimizer.param_groups[0]["lr"])
        if (update + 1) % updates_per_rollout == 0:
            scheduler.step()
    return rates


def test_rollout_warmup_matches_verl_stepped_per_rollout_batch(tiny_model_dir, arithmetic_dataset, tmp_path):
    # The pure factor, with the recipes' 8 updates per rollout batch and 10 warm-up batches: lr 0 for 8 updates,
    # full lr from update 80 on.
    expected = verl_learning_rates(120, 8, 10, 1.0)
    assert [rollout_warmup_factor(u, updates_per_rollout=8, warmup_rollouts=10) for u in range(120)] == expected
    assert expected[:8] == [0.0] * 8 and expected[79] == 0.9 and expected[80] == 1.0
    # Through the trainer: transformers steps the scheduler after every optimizer update.
    trainer = make_trainer(
        tiny_model_dir,
        arithmetic_dataset,
        tmp_path,
        steps_per_generation=4,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        warmup_rollout_batches=3,
    )
    assert trainer.args.updates_per_rollout == 4
    trainer.create_optimizer_and_scheduler(num_training_steps=40)
    rates = []
    for _ in range(40):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    torch.testing.assert_close(torch.tensor(rates), torch.tensor(verl_learning_rates(40, 4, 3, 1e-3)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"positive_nll_coef": -0.1}, "positive_nll_coef"),
        ({"positive_nll_coef": float("nan")}, "positive_nll_coef"),
        ({"positive_nll_reward": "format_reward"}, "positive_nll_reward='format_reward' is not allowed"),
        ({"positive_nll_coef": 0.1, "positive_nll_reward": ""}, "positive_nll_reward='' is not allowed"),
        ({"dynamic_sampling_max_rounds": -1}, "dynamic_sampling_max_rounds"),
        ({"max_prompt_length": 0}, "max_prompt_length"),
        ({"warmup_rollout_batches": 10}, "lr_scheduler_type='constant'"),
        ({"warmup_rollout_batches": 10, "lr_scheduler_type": "constant", "warmup_steps": 5}, "warmup_steps=0"),
        (
            {"warmup_rollout_batches": 2, "lr_scheduler_type": "constant", "gradient_accumulation_steps": 3},
            "whole optimizer updates",
        ),
    ],
)
def test_recipe_fields_are_validated(tmp_path, overrides, message):
    values = {"output_dir": str(tmp_path), "use_cpu": True, "per_device_train_batch_size": 8, "num_generations": 4}
    values.update(overrides)
    if "gradient_accumulation_steps" in overrides:
        values["steps_per_generation"] = 4
    with pytest.raises(ValueError, match=message):
        CEGPPOConfig(**values)


def test_dynamic_sampling_needs_whole_groups_on_each_process(tmp_path, monkeypatch):
    # Two processes of 2 completions each: TRL accepts the global batch of 4 = one group of 4, but each process
    # would hold half a group, which the filter cannot judge on its own.
    monkeypatch.setattr(CEGPPOConfig, "world_size", property(lambda self: 2))
    values = {"output_dir": str(tmp_path), "use_cpu": True, "per_device_train_batch_size": 2, "num_generations": 4}
    values["steps_per_generation"] = 1
    assert CEGPPOConfig(**values).generation_batch_size == 4
    with pytest.raises(ValueError, match="whole groups"):
        CEGPPOConfig(**values, dynamic_sampling=True)
