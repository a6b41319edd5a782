"""Time-varying entropy control, as pure functions of the step, the run length and the measured entropy.

Everything here takes floats (and, for the clip bounds, tensors) and returns floats or tensors; no trainer state.
`ce_gppo_trl.callbacks` turns these into `TrainerCallback`s. Notation follows `PAPERS.md` section 3
(arXiv 2602.09782): step `k` of `T` (`max_steps`), `p_old = pi_old(a|s)`, `eps_std` the ordinary clip half-width.

- Probability-dependent clip bounds: `prob_clip_upper` is H(p) (used for `epsilon_high`, A > 0), `prob_clip_lower`
  is M(p) (used for `epsilon_low`, A < 0); `mix_bound` blends them with `eps_std`.
- Scheduled thresholds: `entropy_schedule_weights` gives, for ID and DID, the weights of H(p) and M(p) in the two
  bounds at progress `k / T`; `od_step` is one transition of the oscillatory-decay (OD) state machine.
- Knob schedules (`knob_schedule_value`): constant, linear, cosine or step changes of any numeric loss knob.
- The closed-loop entropy controller (`controller_update`): a PI law on the relative entropy error, rate-limited,
  with anti-windup and saturation counting.

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

# Its defaults, for EntropyControllerCallback and CEGPPOConfig's entropy_controller_* fields alike: chosen on the plant
# family of benchmarks/controller.py and checked on a plant kept out of the choice (benchmarks/RESULTS.md, section 13).
CONTROLLER_DEFAULTS = {"kp": 0.5, "ki": 0.03, "max_delta": 1.0, "max_rate": 0.2, "horizon": 8}
# Weight of the newest entropy change in the measured slope (an exponential average over about 2 steps).
SLOPE_WEIGHT = 0.5
# The integral skips an error beyond this share of the target while the entropy is already closing it (the
# extrapolated error is smaller): that error is the P term's, and summing it while the entropy is on its way (the
# knob's effect lags) winds the integral up for an overshoot. A large error that is not closing is summed, so that the
# command can reach its limit (full authority, and saturation can be seen).
INTEGRAL_BAND = 0.5
# How close to a limit the command counts as sitting at it, for the saturation count.
SATURATION_MARGIN = 0.05


@dataclass(frozen=True)
class ControllerState:
    """Memory of the entropy controller (`controller_update`); every field is a float, an int or None, so that the
    state saves to JSON and resumes exactly.

    - `integral`: summed relative error (held while the command sits at a limit that the error pushes against).
    - `output`: the command `u` in `[-1, 1]` last decided.
    - `entropy`: the last measured entropy (None before the first); `slope`: the averaged entropy change per step.
    - `saturated_steps`: consecutive steps with `u` at a limit, the error pushing further and not shrinking by a
      quarter since the limit was reached; `limit_error`: `|e|` when the command reached that limit (None off it).
    - `step`: number of updates.
    """

    integral: float = 0.0
    output: float = 0.0
    entropy: float | None = None
    slope: float = 0.0
    saturated_steps: int = 0
    limit_error: float | None = None
    step: int = 0


def controller_update(
    state: ControllerState,
    *,
    target: float,
    entropy: float,
    kp: float,
    ki: float,
    max_rate: float,
    horizon: float = 0.0,
) -> tuple[ControllerState, float]:
    """One step of the entropy controller; returns the new state and the relative error `e = (target - H) / target`.

    A PI law on the relative error, so that one set of gains holds whatever the entropy's scale (ln 24 or ln 49152):

        u = clip(kp * e_ahead + ki * sum(e), -1, 1),  moved by at most `max_rate` per step

    where `e_ahead = (target - (H + horizon * slope)) / target` is the error of the entropy extrapolated `horizon`
    steps along its measured slope (an average of the last changes, weight `SLOPE_WEIGHT`): the knob's effect lags
    the command by several optimizer steps (Adam's momentum, the off-policy updates of a rollout batch), so the P
    term lets go while the entropy is still moving towards the target instead of once it has overshot. The integral,
    on the measured error, removes the offset that the uncontrolled drift leaves.

    `u > 0` must raise entropy (the knobs are laid out so: for the signed entropy term by construction). Anti-windup
    by conditional integration: the integral does not grow while `u` sits at a limit that the error pushes it
    against, and `ki * |sum(e)|` stays within one full command. `saturated_steps` counts the consecutive steps within
    `SATURATION_MARGIN` of such a limit while the error has not shrunk by a quarter since the limit was reached: no
    authority left, not a transient.

    Example:
        >>> state, error = controller_update(ControllerState(), target=2.0, entropy=1.0, kp=1.0, ki=0.1, max_rate=1.0)
        >>> error, state.output  # 1.0 * 0.5 + 0.1 * 0.5 (no slope measured yet)
        (0.5, 0.55)
    """
    error = (target - entropy) / target
    slope = (
        0.0 if state.entropy is None else (1 - SLOPE_WEIGHT) * state.slope + SLOPE_WEIGHT * (entropy - state.entropy)
    )
    ahead = (target - entropy - horizon * slope) / target
    held = kp * ahead + ki * state.integral
    # Conditional integration: no growth while the command already sits at a limit that the error pushes against.
    closing = abs(error) > INTEGRAL_BAND and abs(ahead) < abs(error)
    frozen = (abs(held) >= 1 and held * error > 0) or closing
    integral = state.integral if frozen else state.integral + error
    if ki > 0:
        integral = min(max(integral, -1 / ki), 1 / ki)
    raw = kp * ahead + ki * integral
    command = min(max(raw, -1.0), 1.0)
    command = min(max(command, state.output - max_rate), state.output + max_rate)
    # Near the limit, not exactly at it: the conditional integral holds the command right at 1, where the noise of
    # the P term would otherwise reset the count every few steps.
    at_limit = abs(command) >= 1.0 - SATURATION_MARGIN and command * error > 0
    limit_error = (state.limit_error or abs(error)) if at_limit else None
    saturated = at_limit and abs(error) > 0.75 * limit_error
    new = ControllerState(
        integral=integral,
        output=command,
        entropy=entropy,
        slope=slope,
        saturated_steps=state.saturated_steps + 1 if saturated else 0,
        limit_error=limit_error,
        step=state.step + 1,
    )
    return new, error


def rollout_warmup_factor(step: int, *, updates_per_rollout: int, warmup_rollouts: int) -> float:
    """Learning-rate factor of optimizer update `step` (0-based) under verl's constant warm-up counted in rollout
    batches: verl steps its scheduler once per rollout batch, so every update of rollout batch `k` gets
    `min(1, k / warmup_rollouts)`, and the whole first batch trains at lr 0.

    Example:
        >>> [rollout_warmup_factor(u, updates_per_rollout=2, warmup_rollouts=2) for u in range(6)]
        [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    """
    return min(1.0, (step // updates_per_rollout) / max(1, warmup_rollouts))
