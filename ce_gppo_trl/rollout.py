"""The rollout side of `CEGPPOTrainer`: what it adds to TRL's generation and scoring, as functions of their inputs.

- The NLL term's rewards (`positive_nll_reward_index`, `attach_rewards`): which reward marks a correct response, and
  each completion's total and NLL reward in the rollout batch.
- DAPO's dynamic sampling (`dynamic_sampling`, `refill_prompts`), on the helpers of `ce_gppo_trl.sampling`.
- The left-truncating prompt cap (`cap_prompts`).
- Checks on TRL's scoring pass: the trainer-vs-vLLM log-prob gap (`vllm_logp_difference`) and that ERC's captured
  entropies belong to TRL's `old_per_token_logps` pass (`captured_pass_error`).

The trainer keeps only the thin overrides that call these (see `CEGPPOTrainer`'s docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .sampling import concat_rollouts, group_has_signal, select_rows, total_rewards, truncate_left
from .step_metrics import StepMetrics

ACCURACY_REWARD = "math_accuracy_reward"  # the name ce_gppo_trl.rewards.math_accuracy_reward logs under


def positive_nll_reward_index(reward_names: list[str], coef: float, name: str | None) -> int | None:
    """Index of the reward function that marks correct responses for the NLL term (`positive_nll_reward`), or None
    when the term is off (`positive_nll_coef == 0`).

    Example:
        >>> positive_nll_reward_index(["format_reward", "math_accuracy_reward"], 0.1, None)
        1
    """
    if coef == 0:
        return None
    if name is None and ACCURACY_REWARD in reward_names:
        name = ACCURACY_REWARD
    elif name is None and len(reward_names) == 1:
        return 0
    elif name is None:
        raise ValueError(
            f"positive_nll_reward=None is not allowed with positive_nll_coef={coef} and the reward functions "
            f"{reward_names}: none is {ACCURACY_REWARD!r}, and a total of several rewards would count a "
            "well-formatted wrong answer as correct; name the reward whose score > 0 means correct."
        )
    if name not in reward_names:
        raise ValueError(
            f"positive_nll_reward={name!r} is not allowed: expected one of the reward functions {reward_names}."
        )
    return reward_names.index(name)


def attach_rewards(
    output: dict[str, Any],
    rewards_per_func: torch.Tensor,
    reward_weights: torch.Tensor,
    process_index: int,
    nll_reward_index: int | None,
) -> dict[str, Any]:
    """Add this process's rows of the total reward (`rewards`) and of the NLL term's reward (`positive_nll_rewards`)
    to a rollout batch; `rewards_per_func` holds all processes' rows, as TRL's `_calculate_rewards` returns them."""
    rows = len(output["advantages"])
    first = process_index * rows
    device = output["advantages"].device
    output["rewards"] = total_rewards(rewards_per_func, reward_weights)[first : first + rows].to(device)
    if nll_reward_index is not None:
        output["positive_nll_rewards"] = rewards_per_func[first : first + rows, nll_reward_index].to(device)
    return output


def cap_prompts(prompt_ids: list[list[int]], multimodal: bool, max_prompt_length: int | None) -> list[list[int]]:
    """The prompts left-truncated to `max_prompt_length` tokens (the authors' cap); multimodal prompts are refused."""
    if max_prompt_length is None or all(len(ids) <= max_prompt_length for ids in prompt_ids):
        return prompt_ids
    if multimodal:
        raise ValueError(
            f"max_prompt_length={max_prompt_length}: left truncation would cut multimodal prompts; leave it None here."
        )
    return truncate_left(prompt_ids, max_prompt_length)


def refill_prompts(dataset: Any, num_rows: int, num_generations: int, seed_key: tuple) -> list[dict[str, Any]]:
    """`num_rows / num_generations` fresh prompts drawn at random from `dataset`, each repeated `num_generations`
    times as TRL's RepeatSampler lays them out; seeded by `seed_key` (seed, step, round, process)."""
    generator = torch.Generator().manual_seed(hash(seed_key) % 2**62)
    indices = torch.randint(len(dataset), (num_rows // num_generations,), generator=generator)
    return [dataset[int(i)] for i in indices for _ in range(num_generations)]


def dynamic_sampling(
    first: dict[str, Any],
    next_round: Callable[[int], dict[str, Any]],
    *,
    num_groups: int,
    group_size: int,
    max_rounds: int,
    accelerator: Any,
    metrics: dict[str, list],
    pad_token_id: int,
) -> dict[str, Any]:
    """DAPO's filter: keep the groups with mixed rewards, in generation order, refilled from extra rounds of fresh
    prompts (`next_round(round_index)`); every process runs the same number of rounds (each round's generation and
    reward gather are collective), stopping when no process is short or after `max_rounds`. Slots still empty are
    filled with dropped groups whose completions are masked out, so that they reach neither the loss nor its token
    count (the authors train on the fewer groups they have).

    The refill rounds' entries in TRL's rollout `metrics` (`reward`, `rewards/*`, `completions/*`, ...) are removed:
    they describe the rollout batch's own prompts, as without dynamic sampling, not an average over rounds of fresh
    prompts whose groups were mostly dropped; `dynamic_sampling/*` counts the rounds.
    """
    logged = {key: len(values) for key, values in metrics.items()}
    kept, batch, rounds = [], first, 0
    have = dropped = refilled = 0
    while True:
        signal = group_has_signal(batch["rewards"], group_size)
        take = signal.nonzero().flatten()[: num_groups - have]
        kept.append((_group_rows(take, group_size), batch))
        have += len(take)
        dropped += int((~signal).sum())
        refilled += len(take) if rounds else 0
        short = num_groups - have
        if rounds == max_rounds:
            break
        if accelerator.gather(torch.tensor([short], device=accelerator.device)).max().item() == 0:
            break
        rounds += 1
        batch = next_round(rounds)
    for key in list(metrics):
        if logged.get(key, 0) == 0:
            del metrics[key]  # logged by refill rounds only
        else:
            del metrics[key][logged[key] :]
    # Round 0's dropped groups are enough to fill any shortfall: round 0 alone had `num_groups` groups.
    spare = (~group_has_signal(first["rewards"], group_size)).nonzero().flatten()[:short]
    fill = select_rows(first, _group_rows(spare, group_size))
    fill["completion_mask"] = torch.zeros_like(fill["completion_mask"])
    fill["advantages"] = torch.zeros_like(fill["advantages"])
    parts = [select_rows(source, rows) for rows, source in kept] + [fill]
    output = concat_rollouts(parts, pad_token_id)
    loss_mask = output["completion_mask"] * output.get("tool_mask", 1)
    output["num_items_in_batch"] = accelerator.gather(loss_mask.sum()).sum()

    totals = accelerator.reduce(torch.tensor([dropped, refilled, short], device=accelerator.device).float(), "sum")
    metrics["dynamic_sampling/rounds"].append(float(rounds))
    for name, value in zip(("groups_dropped", "groups_refilled", "groups_masked"), totals.tolist(), strict=True):
        metrics[f"dynamic_sampling/{name}"].append(value)
    return output


def vllm_logp_difference(output: dict[str, Any], accelerator: Any) -> float | None:
    """The mean |trainer log-prob - vLLM log-prob| of the sampled tokens over all processes, or None when the rollout
    has no `old_per_token_logps` or no `sampling_per_token_logps`. Collective.

    Every generation follows TRL's weight sync, and `old_per_token_logps` are scored by the weights just synced, so
    their gap to vLLM's `sampling_per_token_logps` is numerical noise unless the sync missed something.
    """
    old_logps, sampled_logps = output.get("old_per_token_logps"), output.get("sampling_per_token_logps")
    if old_logps is None or sampled_logps is None:
        return None
    gap = (old_logps - sampled_logps).abs()
    mask = output["completion_mask"] * output.get("tool_mask", 1)
    valid = mask.bool() & ~torch.isnan(gap)  # vLLM could not score some tokens (NaN): left out, as TRL does
    local = StepMetrics()
    local.masked_mean("gap", torch.nan_to_num(gap), valid.float())
    return local.reduce(accelerator)["gap"]


def vllm_logp_warning(difference: float, bound: float, step: int) -> str:
    return (
        f"vLLM's log-probs of the tokens it sampled differ from the trainer's by {difference:.3g} on average "
        f"(sampling/sampling_logp_difference/mean at step {step}), above "
        f"vllm_logp_difference_bound={bound}, right after a weight sync: the vLLM engine is likely "
        "generating with weights other than the trainer's (a sync that did not reach every layer), and the "
        "run then trains on samples of another policy. bf16 rounding alone gives about 1e-3 to 4e-2 and "
        "top_p / top_k truncation about -log(kept probability mass); if neither explains the gap, check the "
        "weight sync. Warned once per run; the metric is logged every rollout batch."
    )


def captured_pass_error(old_logps: torch.Tensor | None, captured_logps: torch.Tensor) -> str | None:
    """Why ERC's captured scoring pass is not TRL's `old_per_token_logps` pass, or None when it is."""
    if old_logps is not None and old_logps.shape == captured_logps.shape and torch.equal(old_logps, captured_logps):
        return None
    if old_logps is None:
        detail = "TRL kept no old_per_token_logps"
    elif old_logps.shape != captured_logps.shape:
        detail = f"shapes {tuple(captured_logps.shape)} and {tuple(old_logps.shape)}"
    else:
        detail = f"largest log-prob difference {(old_logps - captured_logps).abs().max().item():.3g}"
    return (
        f"ERC captured the entropies of a scoring pass whose log-probs are not TRL's old_per_token_logps "
        f"({detail}): the old entropies would belong to another model (e.g. the reference pass, adapters off, "
        "with PEFT and beta > 0). This TRL version scores old_per_token_logps differently from TRL 1.16; "
        "CEGPPOTrainer._generate_and_score_completions must be adapted to it."
    )


def _group_rows(groups: torch.Tensor, group_size: int) -> torch.Tensor:
    """Row indices of whole groups: group g covers rows g * group_size ... (g + 1) * group_size - 1."""
    return (groups.unsqueeze(1) * group_size + torch.arange(group_size, device=groups.device)).flatten()
