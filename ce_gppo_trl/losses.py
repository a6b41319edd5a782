"""Per-token policy losses, as pure tensor functions.

Every function here takes tensors and floats, returns a per-token loss of the broadcast shape of its inputs (before
masking and aggregation) and never reads trainer state, so it can be checked line by line against its paper and
reused outside TRL. Notation follows `PAPERS.md`: `log_ratio = log pi_theta - log pi_old`, `ratio = exp(log_ratio)`,
`advantages` the group-normalised advantages, `sg` the stop-gradient.

The clip half-widths `epsilon_low` / `epsilon_high` are floats or per-token tensors; `prob_clip_upper`,
`prob_clip_lower` and `mix_bound` give the probability-dependent ones (arXiv 2602.09782).

`POLICY_LOSSES` maps each `loss_type` to its per-token function (one signature, keyword-only knobs, like verl's
`register_policy_loss`); `aggregate_loss` turns a per-token loss into a scalar in one place.

Example:
    >>> import torch
    >>> from ce_gppo_trl.losses import gppo_policy_loss
    >>> log_ratio = torch.log(torch.tensor([0.5, 1.0, 1.5]))
    >>> advantages = torch.tensor([-1.0, 1.0, 1.0])
    >>> gppo_policy_loss(log_ratio, advantages, epsilon_low=0.2, epsilon_high=0.2, beta1=0.5, beta2=1.0)
    tensor([ 0.4000, -1.0000, -1.2000])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from .validation import check_finite, check_range, fail

Bound = float | torch.Tensor

# Ratios are computed from log-ratios clamped here, so exp() stays finite in float32 (e^20 ~ 4.9e8) for any drift
# between pi_theta and pi_old; a token beyond it gets no gradient, as it would under any dual clip.
MAX_LOG_RATIO = 20.0


def _as_like(bound: Bound, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(bound, dtype=like.dtype, device=like.device)


def safe_ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    """`exp(log_ratio)` with the log-ratio clamped at `MAX_LOG_RATIO` so it is finite for any input."""
    return torch.exp(log_ratio.clamp(max=MAX_LOG_RATIO))


def sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's sequence log-ratio `log s_i = (1 / |y_i|) sum_t log r_{i,t}` over the completion tokens, `(B, 1)`.

    This is TRL's `importance_sampling_level="sequence"` weight (its `log_importance_weights`).
    """
    return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)


def gspo_token_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Sequence-level CE-GPPO: `sg(log s_i) + log r_{i,t} - sg(log r_{i,t})` per token, `(B, T)` (GSPO-token form).

    Each token's value is its sequence's log-ratio `log s_i` (`sequence_log_ratio`), its gradient that of the
    token's own `log pi_theta(y_t)`: GSPO-token's `s_{i,t} = sg(s_i) * pi(y_t) / sg(pi(y_t))` (arXiv 2507.18071).

    Derivation (Eq. 8 with `s_i` for `r`). With the sequence ratio, Eq. 8 reads per sequence `i` of advantage `A_i`:
    NA&LP when `s_i < 1 - eps_low, A_i < 0`: `J_i = beta1 (1 - eps_low) / sg(s_i) * s_i * A_i`; PA&LP when
    `s_i > 1 + eps_high, A_i > 0`: `J_i = beta2 (1 + eps_high) / sg(s_i) * s_i * A_i`; otherwise `J_i = s_i * A_i`.
    Since `grad s_i = s_i * grad log s_i` and `grad log s_i = (1 / |y_i|) sum_t grad log pi(y_t)`,
    `grad J_i = F_i * A_i * (1 / |y_i|) sum_t grad log pi(y_t)` with `F_i = beta1 (1 - eps_low)`,
    `beta2 (1 + eps_high)` or `s_i`: the token-level factors of Eq. 8 with `s_i` for `r`, shared by every token of
    the sequence. Under CE-GPPO's token mean, sequence `i` weighs `|y_i| / N` (`N` tokens in the batch), so the loss
    gradient is `-(1 / N) sum_i F_i A_i sum_t grad log pi(y_t)`. The per-token form here gives `gppo_policy_loss`
    the value `J_i` at every token and the gradient `F_i A_i grad log pi(y_t)` at token `t`: summed over the
    sequence's tokens and divided by `N` it is the same value and the same gradient. Unlike a `(B, 1)` loss
    broadcast over the tokens, a per-token mask (ERC, `top_entropy_quantile`) then removes that token's own term
    `F_i A_i grad log pi(y_t)` and nothing else.

    Example:
        >>> import torch
        >>> log_ratio = torch.tensor([[0.1, 0.3, 9.0]], requires_grad=True)
        >>> gspo_token_log_ratio(log_ratio, torch.tensor([[1.0, 1.0, 0.0]])).detach()
        tensor([[0.2000, 0.2000, 0.2000]])
    """
    return sequence_log_ratio(log_ratio, mask).detach() + log_ratio - log_ratio.detach()


# Probability-dependent clip bounds (arXiv 2602.09782, PAPERS.md section 3): per-token `epsilon_low` / `epsilon_high`
# from `p_old = pi_old(a|s)`, fixed for the whole update; `ce_gppo_trl.schedules` weighs them over the run.


def prob_clip_upper(p_old: torch.Tensor, *, alpha: float, b: float) -> torch.Tensor:
    """H(p): the upper half-width for A > 0, looser for low-probability tokens and tighter for high-probability ones.

    arXiv 2602.09782 writes the bound as `eps_high(p) = alpha * p + b` (alpha < 0) on the new probability
    `p = r * p_old`; solving `r <= 1 + alpha * r * p_old + b` for `r` gives the ratio bound
    `(1 + b) / (1 - alpha * p_old)`, which only needs `p_old`. This returns its half-width
    `(1 + b) / (1 - alpha * p_old) - 1`, the per-token `epsilon_high` the losses take.

    Example:
        >>> prob_clip_upper(torch.tensor([0.0, 0.5]), alpha=-0.2, b=0.28)
        tensor([0.2800, 0.1636])
    """
    return (1 + b) / (1 - alpha * p_old) - 1


def prob_clip_lower(p_old: torch.Tensor, *, alpha: float, b: float) -> torch.Tensor:
    """M(p): the lower half-width for A < 0, tighter for high-probability tokens and looser for low-probability ones.

    The mirror of `prob_clip_upper`: `eps_low(p) = alpha * p + b` (alpha < 0) on the new probability, i.e.
    `r >= 1 - alpha * r * p_old - b`, the ratio bound `(1 - b) / (1 + alpha * p_old)`; returns its half-width
    `1 - (1 - b) / (1 + alpha * p_old)`, the per-token `epsilon_low`.

    Example:
        >>> prob_clip_lower(torch.tensor([0.0, 1.0]), alpha=-0.2, b=0.28)
        tensor([0.2800, 0.1000])
    """
    return 1 - (1 - b) / (1 + alpha * p_old)


def check_prob_clip_bound(side: str, alpha: float, b: float) -> None:
    """Refuse `prob_clip_{side}_alpha` / `prob_clip_{side}_b` for which `prob_clip_upper` / `prob_clip_lower` would
    not stay a valid half-width: `0 < b < 1` and `-b <= alpha < 0` (tighter bounds for likelier tokens)."""
    b_name, alpha_name = f"prob_clip_{side}_b", f"prob_clip_{side}_alpha"
    check_range(b_name, b, 0.0, 1.0)
    if b == 0:
        fail(b_name, b, "expected 0 < b < 1")
    check_finite(alpha_name, alpha)
    if not -b <= alpha < 0:
        fail(alpha_name, alpha, f"expected -{b_name} = {-b} <= alpha < 0 (tighter bounds for likelier tokens)")


def mix_bound(eps_std: Bound, eps_p: torch.Tensor, weight: float) -> Bound:
    """`weight * eps_p + (1 - weight) * eps_std`; returns `eps_std` itself when `weight == 0` (no per-token tensor).

    Example:
        >>> mix_bound(0.2, torch.tensor([0.3, 0.1]), 0.5)
        tensor([0.2500, 0.1500])
    """
    if weight == 0:
        return eps_std
    return eps_std + weight * (eps_p - eps_std)


def clip_regions(
    ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: Bound, epsilon_high: Bound
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the two regions where PPO clipping removes the gradient.

    Returns `(is_low, is_high)`: `is_low` is NA&LP (`r < 1 - eps_low` and `A < 0`), `is_high` is PA&LP
    (`r > 1 + eps_high` and `A > 0`). These are TRL's `clip_ratio/low_*` and `clip_ratio/high_*` masks.
    """
    is_low = (ratio < 1 - epsilon_low) & (advantages < 0)
    is_high = (ratio > 1 + epsilon_high) & (advantages > 0)
    return is_low, is_high


def dual_clip(per_token_loss: torch.Tensor, advantages: torch.Tensor, clip_ratio_c: float | None) -> torch.Tensor:
    """Dual-clip (Ye et al. 2020, as in the CE-GPPO authors' code): for `A < 0` cap the loss at `-A * clip_ratio_c`."""
    if clip_ratio_c is None:
        return per_token_loss
    capped = torch.minimum(per_token_loss, -advantages * clip_ratio_c)
    return torch.where(advantages < 0, capped, per_token_loss)


def dual_clip_mask(ratio: torch.Tensor, advantages: torch.Tensor, clip_ratio_c: float | None) -> torch.Tensor:
    """Tokens whose gradient the dual clip removes: `A < 0` and `r > clip_ratio_c`."""
    if clip_ratio_c is None:
        return torch.zeros_like(ratio, dtype=torch.bool)
    return (advantages < 0) & (ratio > clip_ratio_c)


def gppo_policy_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon_low: Bound,
    epsilon_high: Bound,
    beta1: float,
    beta2: float,
    clip_ratio_c: float | None = None,
    delta: float | None = None,
) -> torch.Tensor:
    """CE-GPPO per-token loss (arXiv 2509.20712, Eq. 8), negated for minimisation.

    | region | objective | gradient factor on `A * grad log pi` |
    |---|---|---|
    | NA&LP: `r < 1 - eps_low`, `A < 0` | `beta1 * (1 - eps_low) / sg(r) * r * A` | `beta1 * (1 - eps_low)` |
    | PA&LP: `r > 1 + eps_high`, `A > 0` | `beta2 * (1 + eps_high) / sg(r) * r * A` | `beta2 * (1 + eps_high)` |
    | otherwise | `r * A` | `r` |

    `beta1 = beta2 = 1` is GPPO (Klear-Reasoner); `beta1 = beta2 = 0` gives the gradients of PPO/DAPO clipping. The
    forward value in the two clipped regions is `beta * (1 -/+ eps) * A`. `clip_ratio_c` adds the dual clip.
    `delta` is TRL's two-sided clip (INTELLECT-2) with its TRL meaning: outside NA&LP / PA&LP, where `r * A` is
    PPO's `min(r A, clip(r) A)`, the term is TRL's `min(min(r, delta) A, clip(r) A)`; NA&LP / PA&LP keep Eq. 8.
    With `delta > 1 + eps_high` (TRL's recommendation) it acts only on `A < 0`, `r > delta`: the dual clip at
    `delta` (value `delta * A`, no gradient); with `beta1 = beta2 = 0` the gradients are TRL's dapo + delta.

    Sequence level (GSPO, `importance_sampling_level="sequence"`): pass `gspo_token_log_ratio(log_ratio, mask)`,
    whose every token carries its sequence's log-ratio `log s_i`, so the regions and factors above hold with `s_i`
    in place of `r` (derivation in `gspo_token_log_ratio`).

    Args:
        log_ratio: `log pi_theta - log pi_old` per token, `(B, T)` (or `(B, 1)`).
        advantages: advantages broadcastable to `log_ratio`, typically `(B, 1)`.
        epsilon_low, epsilon_high: clip half-widths, floats or per-token tensors broadcastable to `log_ratio`.
        beta1: gradient scale of the NA&LP region (larger pushes entropy down).
        beta2: gradient scale of the PA&LP region (larger pushes entropy up).
        clip_ratio_c: dual-clip ratio (> 1) for negative advantages, or `None`.
        delta: TRL's cap on the unclipped ratio (> 1), or `None`.

    Returns:
        The per-token loss, same shape as `log_ratio` broadcast with `advantages`.
    """
    ratio = safe_ratio(log_ratio)
    # sg(r)^-1 * r is 1 in value with gradient grad(log pi): computed in log space so that it stays finite.
    unit_ratio = torch.exp(log_ratio - log_ratio.detach())
    is_low, is_high = clip_regions(ratio, advantages, epsilon_low, epsilon_high)
    low_scale = beta1 * (1 - _as_like(epsilon_low, log_ratio))
    high_scale = beta2 * (1 + _as_like(epsilon_high, log_ratio))
    unclipped = ratio * advantages
    if delta is not None:
        # Outside NA&LP / PA&LP, r * A is PPO's min(r A, clip(r) A); with delta it is TRL's min(min(r, delta) A, ...).
        unclipped = -ppo_clip_policy_loss(
            log_ratio, advantages, epsilon_low=epsilon_low, epsilon_high=epsilon_high, delta=delta
        )
    objective = torch.where(
        is_low,
        low_scale * unit_ratio * advantages,
        torch.where(is_high, high_scale * unit_ratio * advantages, unclipped),
    )
    return dual_clip(-objective, advantages, clip_ratio_c)


def ppo_clip_policy_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon_low: Bound,
    epsilon_high: Bound,
    delta: float | None = None,
    clip_ratio_c: float | None = None,
    **_: object,
) -> torch.Tensor:
    """PPO clipped surrogate `-min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)`: TRL's grpo/bnpo/dr_grpo/dapo/luspo.

    `delta` is INTELLECT-2's two-sided upper cap on `r` (TRL's `delta`); bounds may be per-token tensors.
    """
    ratio = safe_ratio(log_ratio)
    clipped = torch.clamp(ratio, 1 - _as_like(epsilon_low, ratio), 1 + _as_like(epsilon_high, ratio))
    if delta is not None:
        ratio = torch.clamp(ratio, max=delta)
    per_token_loss = -torch.min(ratio * advantages, clipped * advantages)
    return dual_clip(per_token_loss, advantages, clip_ratio_c)


def cispo_policy_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    per_token_logps: torch.Tensor,
    epsilon_high: Bound,
    **_: object,
) -> torch.Tensor:
    """CISPO (MiniMax-M1): `-sg(min(r, eps_high)) * A * log pi`, as TRL's `cispo`."""
    clamped = torch.minimum(safe_ratio(log_ratio), _as_like(epsilon_high, log_ratio)).detach()
    return -clamped * advantages * per_token_logps


def sapo_policy_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    sapo_temperature_pos: float,
    sapo_temperature_neg: float,
    **_: object,
) -> torch.Tensor:
    """SAPO soft gate `-sigmoid(tau * (r - 1)) * 4 / tau * A`, as TRL's `sapo`."""
    temperatures = torch.where(advantages > 0, sapo_temperature_pos, sapo_temperature_neg)
    return -torch.sigmoid(temperatures * (safe_ratio(log_ratio) - 1)) * 4 / temperatures * advantages


def vespo_policy_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    per_token_logps: torch.Tensor,
    phi_seq: torch.Tensor,
    **_: object,
) -> torch.Tensor:
    """VESPO `-phi(w) * A * log pi` with TRL's detached gamma weights `phi_seq` (B, 1)."""
    return -phi_seq * advantages * per_token_logps


# Clip-Cov and KL-Cov (Cui et al., "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617), as verl's
# `compute_policy_loss_clip_cov` / `compute_policy_loss_kl_cov`: both act on the tokens whose centred covariance
# between advantage and log-probability is large, the tokens that drive entropy down. As in verl, the covariance is
# centred and the selection counted over the tokens of one call: one micro-batch on one process.


def token_covariance(advantages: torch.Tensor, per_token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token centred covariance `(A - mean(A)) * (log pi - mean(log pi))`, means over the `mask` tokens, detached.

    verl's `cov_all` / `cov_lst_all`: advantages broadcast over the tokens, so a sequence's advantage is weighted by
    its length in the mean. Tokens outside `mask` get `-inf`, so that they are never selected.

    Example:
        >>> import torch
        >>> token_covariance(torch.tensor([[1.0], [-1.0]]), torch.log(torch.tensor([[0.5, 0.5], [0.25, 1.0]])),
        ...                  torch.tensor([[1, 1], [1, 0]]))
        tensor([[0.1540, 0.1540],
                [0.6161,   -inf]])
    """
    valid = mask.bool()
    advantages = advantages.detach().expand_as(per_token_logps)
    logps = per_token_logps.detach()
    count = valid.sum().clamp(min=1)
    centred_adv = advantages - (advantages * valid).sum() / count
    centred_logps = logps - (logps * valid).sum() / count
    return torch.where(valid, centred_adv * centred_logps, torch.full_like(logps, -torch.inf))


def clip_cov_selection(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    mask: torch.Tensor,
    per_token_logps: torch.Tensor,
    epsilon_low: Bound,
    epsilon_high: Bound,
    clip_cov_ratio: float,
    clip_cov_lb: float,
    clip_cov_ub: float,
    generator: torch.Generator | None = None,
    **_: object,
) -> torch.Tensor:
    """The tokens Clip-Cov detaches: `max(int(clip_cov_ratio * N), 1)` drawn at random (`N` = tokens in `mask`)
    among the candidates, the tokens in `mask` not clipped by PPO with `clip_cov_lb < cov < clip_cov_ub`.

    As verl: candidates in row-major order, `torch.randperm` on the CPU (the global generator unless `generator`),
    the first ones of the permutation kept; fewer candidates than the count means all of them.
    """
    is_low, is_high = clip_regions(safe_ratio(log_ratio.detach()), advantages, epsilon_low, epsilon_high)
    cov = token_covariance(advantages, per_token_logps, mask)
    candidates = (cov > clip_cov_lb) & (cov < clip_cov_ub) & ~(is_low | is_high) & mask.bool()
    positions = candidates.nonzero()
    count = max(int(clip_cov_ratio * mask.sum().item()), 1)
    chosen = positions[torch.randperm(len(positions), generator=generator)[:count].to(positions.device)]
    selected = torch.zeros_like(candidates)
    selected[tuple(chosen.T)] = True
    return selected


def kl_cov_selection(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    mask: torch.Tensor,
    per_token_logps: torch.Tensor,
    kl_cov_ratio: float,
    **_: object,
) -> torch.Tensor:
    """The tokens KL-Cov penalises: the top `max(1, int(N * kl_cov_ratio))` tokens in `mask` by `cov` (none when
    `N = 0`), as verl's `torch.topk` over the valid tokens in row-major order."""
    cov = token_covariance(advantages, per_token_logps, mask)
    valid = mask.bool() & torch.ones_like(cov, dtype=torch.bool)
    selected = torch.zeros_like(valid)
    num_valid = int(valid.sum())
    if num_valid:
        top = torch.topk(cov[valid], max(1, int(num_valid * kl_cov_ratio))).indices
        selected[tuple(valid.nonzero()[top].T)] = True
    return selected


def clip_cov_policy_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    mask: torch.Tensor,
    per_token_logps: torch.Tensor,
    epsilon_low: Bound,
    epsilon_high: Bound,
    clip_cov_ratio: float,
    clip_cov_lb: float,
    clip_cov_ub: float,
    clip_ratio_c: float | None = None,
    selected: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    **_: object,
) -> torch.Tensor:
    """Clip-Cov (arXiv 2505.22617; verl's `clip_cov`): PPO's clipped surrogate, with the loss and gradient of the
    `clip_cov_selection` tokens set to 0.

    `-min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A) * (1 - selected)`. verl applies no dual clip here (its
    recipes' `clip_ratio_c` is unused by `clip_cov`); `clip_ratio_c` adds one, off by default. `selected` (bool, the
    shape of the loss) skips the draw when the caller already made it.

    Example:
        >>> import torch
        >>> log_ratio, advantages = torch.zeros(1, 4), torch.tensor([[1.0]])
        >>> logps, mask = torch.log(torch.tensor([[0.1, 0.2, 0.4, 0.8]])), torch.ones(1, 4)
        >>> clip_cov_policy_loss(log_ratio, advantages, mask=mask, per_token_logps=logps, epsilon_low=0.2,
        ...                      epsilon_high=0.2, clip_cov_ratio=0.25, clip_cov_lb=-1.0, clip_cov_ub=1.0,
        ...                      selected=torch.tensor([[False, False, False, True]]))
        tensor([[-1., -1., -1., -0.]])
    """
    if selected is None:
        selected = clip_cov_selection(
            log_ratio,
            advantages,
            mask=mask,
            per_token_logps=per_token_logps,
            epsilon_low=epsilon_low,
            epsilon_high=epsilon_high,
            clip_cov_ratio=clip_cov_ratio,
            clip_cov_lb=clip_cov_lb,
            clip_cov_ub=clip_cov_ub,
            generator=generator,
        )
    surrogate = ppo_clip_policy_loss(
        log_ratio, advantages, epsilon_low=epsilon_low, epsilon_high=epsilon_high, clip_ratio_c=clip_ratio_c
    )
    return surrogate * (~selected).to(surrogate.dtype)


def kl_cov_policy_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    mask: torch.Tensor,
    per_token_logps: torch.Tensor,
    kl_cov_ratio: float,
    ppo_kl_coef: float,
    selected: torch.Tensor | None = None,
    **_: object,
) -> torch.Tensor:
    """KL-Cov (arXiv 2505.22617; verl's `kl_cov`): the unclipped surrogate `-r * A`, plus `ppo_kl_coef * |log r|` on
    the `kl_cov_selection` tokens. No ratio clipping, as in verl.

    Example:
        >>> import torch
        >>> log_ratio, advantages = torch.log(torch.tensor([[0.5, 2.0]])), torch.tensor([[1.0]])
        >>> kl_cov_policy_loss(log_ratio, advantages, mask=torch.ones(1, 2), per_token_logps=log_ratio,
        ...                    kl_cov_ratio=0.5, ppo_kl_coef=1.0, selected=torch.tensor([[False, True]]))
        tensor([[-0.5000, -1.3069]])
    """
    if selected is None:
        selected = kl_cov_selection(
            log_ratio, advantages, mask=mask, per_token_logps=per_token_logps, kl_cov_ratio=kl_cov_ratio
        )
    surrogate = -safe_ratio(log_ratio) * advantages
    return surrogate + ppo_kl_coef * log_ratio.abs() * selected.to(surrogate.dtype)


# loss_type -> the token selection its loss makes from the same knobs; the trainer draws it once and logs its share.
COVARIANCE_SELECTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "clip_cov": clip_cov_selection,
    "kl_cov": kl_cov_selection,
}


def _ce_gppo(log_ratio: torch.Tensor, advantages: torch.Tensor, **kwargs: object) -> torch.Tensor:
    names = ("epsilon_low", "epsilon_high", "beta1", "beta2", "clip_ratio_c", "delta")
    return gppo_policy_loss(log_ratio, advantages, **{name: kwargs[name] for name in names})


PolicyLossFn = Callable[..., torch.Tensor]


@dataclass
class PolicyLossArgs:
    """The keyword arguments every `POLICY_LOSSES` function receives; each reads the ones its method uses.

    Example:
        >>> import torch
        >>> log_ratio, advantages = torch.log(torch.tensor([0.5, 1.5])), torch.tensor([-1.0, 1.0])
        >>> args = PolicyLossArgs(per_token_logps=torch.zeros(2), epsilon_low=0.2, epsilon_high=0.2, beta1=0.5)
        >>> POLICY_LOSSES["ce_gppo"](log_ratio, advantages, **args.as_kwargs())
        tensor([ 0.4000, -1.2000])
    """

    per_token_logps: torch.Tensor  # log pi_theta (CISPO, VESPO, Clip-Cov, KL-Cov)
    epsilon_low: Bound  # clip half-widths: floats, or per-token tensors (probability-dependent bounds)
    epsilon_high: Bound
    beta1: float = 1.0  # CE-GPPO's gradient weights in NA&LP / PA&LP
    beta2: float = 1.0
    clip_ratio_c: float | None = None  # dual clip
    delta: float | None = None  # INTELLECT-2's two-sided cap
    sapo_temperature_pos: float | None = None  # SAPO
    sapo_temperature_neg: float | None = None
    phi_seq: torch.Tensor | None = None  # VESPO's gamma weights (B, 1)
    mask: torch.Tensor | None = None  # loss tokens (Clip-Cov / KL-Cov centre their covariance over them)
    clip_cov_ratio: float | None = None  # Clip-Cov / KL-Cov, with verl's names
    clip_cov_lb: float | None = None
    clip_cov_ub: float | None = None
    kl_cov_ratio: float | None = None
    ppo_kl_coef: float | None = None
    selected: torch.Tensor | None = None  # Clip-Cov / KL-Cov tokens, drawn once for the loss and its metric

    def as_kwargs(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


# loss_type -> per-token loss. Every function is called as fn(log_ratio, advantages, **PolicyLossArgs.as_kwargs())
# and ignores the arguments it does not use.
POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "ce_gppo": _ce_gppo,
    "grpo": ppo_clip_policy_loss,
    "bnpo": ppo_clip_policy_loss,
    "dr_grpo": ppo_clip_policy_loss,
    "dapo": ppo_clip_policy_loss,
    "luspo": ppo_clip_policy_loss,
    "cispo": cispo_policy_loss,
    "sapo": sapo_policy_loss,
    "vespo": vespo_policy_loss,
    "clip_cov": clip_cov_policy_loss,
    "kl_cov": kl_cov_policy_loss,
}

# Loss types this library adds (TRL lacks them): they always run on this library's loss path.
LIBRARY_LOSS_TYPES = ("ce_gppo", "clip_cov", "kl_cov")

# Loss types whose gradient is removed by ratio clipping in the NA&LP / PA&LP regions, so clip metrics apply.
CLIPPED_LOSS_TYPES = ("ce_gppo", "grpo", "bnpo", "dr_grpo", "dapo", "luspo", "clip_cov")

# loss_type -> aggregation, as TRL 1.16 normalises each loss type.
AGGREGATION: dict[str, str] = {
    "grpo": "seq-mean-token-mean",
    "sapo": "seq-mean-token-mean",
    "bnpo": "token-mean-local",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
    "cispo": "token-mean",
    "vespo": "token-mean",
    "ce_gppo": "token-mean",
    "luspo": "seq-mean-token-sum",
    "clip_cov": "token-mean",  # verl's recipes for both: loss_agg_mode="token-mean"
    "kl_cov": "token-mean",
}


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_items: torch.Tensor | float | None = None,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar.

    Modes (verl's names): `token-mean` divides the masked sum by `num_items`, the number of loss tokens in the whole
    batch the update spans (DAPO / CE-GPPO token-level mean); `token-mean-local` by this micro-batch's tokens;
    `seq-mean-token-mean` averages per-sequence means (GRPO); `seq-mean-token-sum-norm` divides by
    `B * max_completion_length` (Dr. GRPO); `seq-mean-token-sum` averages per-sequence sums (LUSPO).
    """
    masked = per_token_loss * mask
    if mode == "token-mean":
        if num_items is None:
            raise ValueError("aggregate_loss(mode='token-mean') needs num_items, the batch-wide token count.")
        return masked.sum() / torch.as_tensor(num_items, dtype=masked.dtype).clamp(min=1.0)
    if mode == "token-mean-local":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if mode == "seq-mean-token-sum-norm":
        if max_completion_length is None:
            raise ValueError("aggregate_loss(mode='seq-mean-token-sum-norm') needs max_completion_length.")
        return masked.sum() / (per_token_loss.size(0) * max_completion_length)
    if mode == "seq-mean-token-sum":
        return masked.sum(-1).mean()
    raise ValueError(f"aggregate_loss: unknown mode {mode!r}; allowed: {sorted(set(AGGREGATION.values()))}.")


def entropy_ratio(entropy: torch.Tensor, old_entropy: torch.Tensor) -> torch.Tensor:
    """ERC's per-token entropy ratio `rho = (H_theta + 1e-8) / (H_old + 1e-8)` (arXiv 2512.05591)."""
    return (entropy + 1e-8) / (old_entropy + 1e-8)


def entropy_ratio_mask(entropy: torch.Tensor, old_entropy: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Entropy Ratio Clipping: True where a token keeps its gradient, i.e. `low < rho < high` (open band).

    Example:
        >>> import torch
        >>> entropy_ratio_mask(torch.tensor([1.0, 0.5, 2.0]), torch.tensor([1.0, 1.0, 1.0]), 0.95, 1.05)
        tensor([ True, False, False])
    """
    rho = entropy_ratio(entropy, old_entropy)
    return (rho > low) & (rho < high)


def positive_nll_loss(per_token_logps: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """The CE-GPPO and ERC authors' extra NLL on correct responses (`positive_loss_coeff` in their verl `dp_actor`):
    the token mean of `-log pi_theta` over the tokens of this micro-batch's responses with `positive` set, 0 when none.

    Its normaliser is the correct responses' own tokens, as in the authors' `agg_loss(-log_prob[correct], ...)`;
    the caller weights the micro-batch by its share of the update's sequences, as their dynamic batches do.

    Example:
        >>> import torch
        >>> logps = torch.log(torch.tensor([[0.5, 0.25], [0.1, 0.1]]))
        >>> positive_nll_loss(logps, torch.tensor([[1, 1], [1, 0]]), torch.tensor([True, False]))
        tensor(1.0397)
    """
    selected = mask * positive.to(mask.dtype).unsqueeze(-1)
    return -(per_token_logps * selected).sum() / selected.sum().clamp(min=1.0)
