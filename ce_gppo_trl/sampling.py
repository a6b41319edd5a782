"""Dynamic sampling (DAPO's group filter) and the prompt cap: pure helpers on rollout batches.

A rollout batch here is the dict TRL's `GRPOTrainer._generate_and_score_completions` returns for one process: row
tensors (first dimension = completions), prompts left-padded, completions right-padded, and the scalar
`num_items_in_batch`. `ce_gppo_trl.rollout.dynamic_sampling` generates one or more such batches per rollout step,
keeps the groups whose rewards are not all equal with `group_has_signal`, and joins them with `select_rows` and
`concat_rollouts`.
"""

from __future__ import annotations

from typing import Any

import torch

# Left-padded (prompt side) keys; every other 2-D tensor is right-padded (completion side).
PROMPT_KEYS = ("prompt_ids", "prompt_mask")
# Keys a rollout batch may hold that dynamic sampling knows how to pad, select and join.
ROLLOUT_KEYS = PROMPT_KEYS + (
    "completion_ids",
    "completion_mask",
    "tool_mask",
    "advantages",
    "rewards",
    "positive_nll_rewards",
    "old_per_token_logps",
    "old_entropies",
    "ref_per_token_logps",
    "sampling_per_token_logps",
    "importance_sampling_ratio",
    "num_items_in_batch",
)


def total_rewards(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over reward functions per completion, as TRL logs `reward`; NaN where every function gave None.

    Example:
        >>> total_rewards(torch.tensor([[1.0, 0.5], [float("nan"), float("nan")]]), torch.tensor([1.0, 2.0]))
        tensor([2., nan])
    """
    rewards = (rewards_per_func * reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    return rewards.masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))


def group_has_signal(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """DAPO's dynamic-sampling filter: True for each group of `num_generations` consecutive completions whose rewards
    are not all equal (reward std > 0), i.e. groups whose GRPO advantages are not all zero.

    Unscorable completions (NaN reward) are ignored; a group with fewer than two scored completions has no signal.

    Example:
        >>> group_has_signal(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
        tensor([ True, False])
    """
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of num_generations={num_generations}.")
    grouped = rewards.view(-1, num_generations)
    scored = ~torch.isnan(grouped)
    high = torch.where(scored, grouped, -torch.inf).max(dim=1).values
    low = torch.where(scored, grouped, torch.inf).min(dim=1).values
    return (scored.sum(dim=1) >= 2) & (high > low)


def select_rows(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """The completions `rows` of a rollout batch (every row tensor indexed; `num_items_in_batch` left out)."""
    _check_keys(batch)
    return {key: value[rows] for key, value in batch.items() if key != "num_items_in_batch"}


def concat_rollouts(batches: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Join rollout batches with different padded widths: prompt tensors are left-padded, completion tensors
    right-padded to the widest (ids with `pad_token_id`, `tool_mask` with 1 as TRL pads it, everything else with 0).

    `num_items_in_batch` is not joined: it spans every process and is recomputed by the caller.
    """
    keys = set(batches[0]) - {"num_items_in_batch"}
    for batch in batches:
        _check_keys(batch)
        if set(batch) - {"num_items_in_batch"} != keys:
            raise ValueError(f"rollout batches hold different keys: {sorted(keys)} vs {sorted(batch)}.")
    joined = {}
    for key in sorted(keys):
        values = [batch[key] for batch in batches]
        if values[0].dim() >= 2:
            width = max(value.size(1) for value in values)
            fill = pad_token_id if key.endswith("_ids") else 1 if key == "tool_mask" else 0
            values = [_pad_width(value, width, fill, left=key in PROMPT_KEYS) for value in values]
        joined[key] = torch.cat(values, dim=0)
    return joined


def truncate_left(prompt_ids: list[list[int]], max_length: int) -> list[list[int]]:
    """Keep the last `max_length` tokens of each prompt (verl's `data.truncation='left'`).

    Example:
        >>> truncate_left([[1, 2, 3], [4]], 2)
        [[2, 3], [4]]
    """
    return [list(ids[-max_length:]) if len(ids) > max_length else ids for ids in prompt_ids]


def _pad_width(value: torch.Tensor, width: int, fill: float, *, left: bool) -> torch.Tensor:
    missing = width - value.size(1)
    if missing == 0:
        return value
    padding = value.new_full((value.size(0), missing, *value.shape[2:]), fill)
    return torch.cat([padding, value] if left else [value, padding], dim=1)


def _check_keys(batch: dict[str, Any]) -> None:
    unknown = sorted(set(batch) - set(ROLLOUT_KEYS))
    if unknown:
        raise ValueError(
            f"dynamic_sampling cannot join rollout inputs {unknown} (multimodal or tool inputs); supported: "
            f"{list(ROLLOUT_KEYS)}. Set dynamic_sampling=False for this model."
        )
