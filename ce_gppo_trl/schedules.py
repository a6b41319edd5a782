"""Time-varying entropy control, as pure functions of the step, the run length and the measured entropy.

Everything here takes floats (and, for the clip bounds, tensors) and returns floats or tensors; no trainer state.
`ce_gppo_trl.callbacks` turns these into `TrainerCallback`s. Notation follows `PAPERS.md` section 3
(arXiv 2602.09782): step `k` of `T` (`max_steps`), `p_old = pi_old(a|s)`, `eps_std` the ordinary clip half-width.

- Probability-dependent clip bounds: `prob_clip_upper` is H(p) (used for `epsilon_high`, A > 0), `prob_clip_lower`
  is M(p) (used for `epsilon_low`, A < 0); `mix_bound` blends them with `eps_std`.
- Scheduled thresholds: `entropy_schedule_weights` gives, for ID and DID, the weights of H(p) and M(p) in the two
  bounds at progress `k / T`; `od_step` is one transition of the oscillatory-decay (OD) state machine.
- Knob schedules (`knob_schedule_value`): constant, linear, cosine or step changes of any numeric loss knob.
- The closed-loop entropy controller (`controller_update`), a rate-limited PI controller with anti-windup.

Example:
    >>> import torch
    >>> prob_clip_upper(torch.tensor([0.0, 1.0]), alpha=-0.2, b=0.28)
    tensor([0.2800, 0.0667])
    >>> entropy_schedule_weights("increase_decrease", 0.25)
    ScheduleWeights(high=0.5, low=0.0, phase=1, lam=0.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .losses import Bound

ENTROPY_SCHEDULES = ("none", "increase_decrease", "decrease_increase_decrease", "oscillatory_decay")
KNOB_SCHEDULES = ("constant", "linear", "cosine", "step")


def _check_total_steps(total_steps: int | None, what: str) -> int:
    if total_steps is None or total_steps <= 0:
        raise ValueError(
            f"max_steps={total_steps!r} is not allowed: {what} needs the run length; set max_steps > 0 "
            "(or a train dataset with a length, so that the Trainer can compute it)."
        )
    return total_steps


# Probability-dependent clip bounds.


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


def mix_bound(eps_std: Bound, eps_p: torch.Tensor, weight: float) -> Bound:
    """`weight * eps_p + (1 - weight) * eps_std`; returns `eps_std` itself when `weight == 0` (no per-token tensor).

    Example:
        >>> mix_bound(0.2, torch.tensor([0.3, 0.1]), 0.5)
        tensor([0.2500, 0.1500])
    """
    if weight == 0:
        return eps_std
    return eps_std + weight * (eps_p - eps_std)


# Scheduled thresholds (ID, DID) and oscillatory decay (OD).


@dataclass(frozen=True)
class ScheduleWeights:
    """Weights of H(p) in `epsilon_high` and of M(p) in `epsilon_low` (0 = `eps_std`, 1 = fully p-dependent)."""

    high: float
    low: float
    phase: int
    lam: float


def schedule_lambda(progress: float, split: float = 0.5) -> float:
    """`lambda_k`: 1 -> 0 over the first phase `[0, split]`, 0 -> -1 over the second.

    With `split = 0.5` this is the paper's `1 - 2k/T`; another split keeps both phases linear and continuous.

    Example:
        >>> schedule_lambda(0.75), schedule_lambda(0.15, split=0.3)
        (-0.5, 0.5)
    """
    if progress <= split:
        return 1 - progress / split
    return -(progress - split) / (1 - split)


def entropy_schedule_weights(name: str, progress: float, split: float = 0.5, od_state: int = 0) -> ScheduleWeights:
    """Bounds of the schedule `name` at progress `k / T` (arXiv 2602.09782, section 3 of `PAPERS.md`).

    With `w_high, w_low` the returned weights, `epsilon_high = w_high * H(p) + (1 - w_high) * eps_std` and
    `epsilon_low = w_low * M(p) + (1 - w_low) * eps_std`:

    - `increase_decrease` (ID): k <= split*T: `(lambda*H(p) + (1-lambda)*eps_std, eps_std)`;
      later: `(eps_std, (1+lambda)*M(p) - lambda*eps_std)`.
    - `decrease_increase_decrease` (DID): k <= split*T: `(lambda*eps_std + (1-lambda)*H(p), eps_std)`;
      later: `(H(p), (1+lambda)*M(p) - lambda*eps_std)`.
    - `oscillatory_decay` (OD): `od_state == 1`: `(H(p), eps_std)`; 0: `(eps_std, M(p))` (see `od_step`).
    - `none`: `(eps_std, eps_std)`.

    Example:
        >>> entropy_schedule_weights("decrease_increase_decrease", 0.75)
        ScheduleWeights(high=1.0, low=0.5, phase=2, lam=-0.5)
    """
    if name == "none":
        return ScheduleWeights(0.0, 0.0, 0, 0.0)
    if name == "oscillatory_decay":
        return ScheduleWeights(float(od_state == 1), float(od_state == 0), od_state, 0.0)
    lam = schedule_lambda(progress, split)
    phase = 1 if progress <= split else 2
    if name == "increase_decrease":
        return ScheduleWeights(lam, 0.0, 1, lam) if phase == 1 else ScheduleWeights(0.0, 1 + lam, 2, lam)
    if name == "decrease_increase_decrease":
        return ScheduleWeights(1 - lam, 0.0, 1, lam) if phase == 1 else ScheduleWeights(1.0, 1 + lam, 2, lam)
    raise ValueError(f"entropy_schedule={name!r} is not allowed: expected one of {list(ENTROPY_SCHEDULES)}.")


def od_thresholds(progress: float, h_init: float, min_ratio: float = 0.2) -> tuple[float, float]:
    """OD hysteresis band `(tau_low, tau_high(k))`: `H_min = min_ratio * H_init`, `tau_low = H_min`,
    `tau_high(k) = H_min + (H_init - H_min) * (1 - k/T)`.

    Example:
        >>> od_thresholds(0.5, h_init=2.5)
        (0.5, 1.5)
    """
    h_min = min_ratio * h_init
    return h_min, h_min + (h_init - h_min) * (1 - progress)


def od_step(state: int, entropy: float, progress: float, h_init: float, min_ratio: float = 0.2) -> int:
    """One OD transition: 1 (raise entropy) when `entropy <= tau_low`, 0 (lower it) when `entropy > tau_high(k)`,
    otherwise unchanged; that dead band is the hysteresis that makes entropy oscillate with a decaying amplitude.

    Example:
        >>> [od_step(0, h, 0.5, h_init=2.0) for h in (0.3, 1.0, 1.5)]
        [1, 0, 0]
        >>> [od_step(1, h, 0.5, h_init=2.0) for h in (0.3, 1.0, 1.5)]
        [1, 1, 0]
    """
    tau_low, tau_high = od_thresholds(progress, h_init, min_ratio)
    if entropy <= tau_low:
        return 1
    if entropy > tau_high:
        return 0
    return state


# Knob schedules (betas, clip bounds, the ERC band).


def knob_schedule_value(
    kind: str,
    step: int,
    total_steps: int | None,
    *,
    initial: float,
    final: float | None = None,
    steps: Sequence[int] = (),
    values: Sequence[float] = (),
) -> float:
    """Value of a scheduled knob at optimizer step `step` (0-based) of `total_steps`.

    - `constant`: `initial`.
    - `linear`: `initial + (final - initial) * step / total_steps`.
    - `cosine`: `final + (initial - final) * (1 + cos(pi * step / total_steps)) / 2`.
    - `step`: `initial` until `steps[0]`, then `values[i]` from step `steps[i]` on (CE-GPPO's beta1 0 -> 0.5 at
      step 585 is `steps=[585], values=[0.5]`).

    Example:
        >>> knob_schedule_value("cosine", 50, 100, initial=1.0, final=0.0)
        0.5
        >>> knob_schedule_value("step", 600, None, initial=0.0, steps=[585], values=[0.5])
        0.5
    """
    if kind == "constant":
        return initial
    if kind == "step":
        value = initial
        for start, new_value in zip(steps, values, strict=True):
            if step >= start:
                value = new_value
        return value
    if kind not in ("linear", "cosine"):
        raise ValueError(f"schedule={kind!r} is not allowed: expected one of {list(KNOB_SCHEDULES)}.")
    if final is None:
        raise ValueError(f"a {kind!r} schedule needs a final value, got final=None.")
    progress = min(step / _check_total_steps(total_steps, f"a {kind!r} knob schedule"), 1.0)
    if kind == "linear":
        return initial + (final - initial) * progress
    return final + (initial - final) * (1 + math.cos(math.pi * progress)) / 2


# Closed-loop entropy controller.


@dataclass(frozen=True)
class ControllerState:
    """PI controller memory: the integral of the relative error and the last output."""

    integral: float = 0.0
    output: float = 0.0


def controller_update(
    state: ControllerState,
    *,
    target: float,
    entropy: float,
    kp: float,
    ki: float,
    max_delta: float,
    max_rate: float,
) -> tuple[ControllerState, float]:
    """One step of the entropy controller; returns the new state and the relative error `(target - H) / target`.

    The output `u` is a PI law on the relative error (scale-free, so one set of gains works for any vocabulary),
    clamped to `[-max_delta, max_delta]` (bounded authority) and moved by at most `max_rate` per step (rate limit).
    The integral is clamped so that `ki * integral` stays within `max_delta` (anti-windup). `u > 0` asks for more
    entropy: the callback adds it to beta2 and subtracts it from beta1 (or widens epsilon_high, narrows epsilon_low).

    Example:
        >>> controller_update(ControllerState(), target=2.0, entropy=1.0, kp=1.0, ki=0.2, max_delta=1.0, max_rate=0.1)
        (ControllerState(integral=0.5, output=0.1), 0.5)
    """
    error = (target - entropy) / target
    limit = max_delta / ki if ki > 0 else 0.0
    integral = min(max(state.integral + error, -limit), limit)
    raw = min(max(kp * error + ki * integral, -max_delta), max_delta)
    output = min(max(raw, state.output - max_rate), state.output + max_rate)
    return ControllerState(integral, output), error


def rollout_warmup_factor(step: int, *, updates_per_rollout: int, warmup_rollouts: int) -> float:
    """Learning-rate factor of optimizer update `step` (0-based) under verl's constant warm-up counted in rollout
    batches: verl steps its scheduler once per rollout batch, so every update of rollout batch `k` gets
    `min(1, k / warmup_rollouts)`, and the whole first batch trains at lr 0.

    Example:
        >>> [rollout_warmup_factor(u, updates_per_rollout=2, warmup_rollouts=2) for u in range(6)]
        [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    """
    return min(1.0, (step // updates_per_rollout) / max(1, warmup_rollouts))
