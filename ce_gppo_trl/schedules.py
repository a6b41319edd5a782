"""Time-varying entropy control, as pure functions of the step, the run length and the measured entropy.

Everything here takes floats and returns floats; no trainer state. `ce_gppo_trl.callbacks` turns these into
`TrainerCallback`s. Notation follows `PAPERS.md` section 3 (arXiv 2602.09782): step `k` of `T` (`max_steps`),
`p_old = pi_old(a|s)`, `eps_std` the ordinary clip half-width.

- Scheduled thresholds: `prob_clip_schedule_weights` gives, for ID and DID, the weights of H(p) and M(p) (the
  probability-dependent bounds `ce_gppo_trl.losses.prob_clip_upper` and `prob_clip_lower`) in the two bounds at
  progress `k / T`; `od_step` is one transition of the oscillatory-decay (OD) state machine.
- Knob schedules (`knob_schedule_value`): constant, linear, cosine or step changes of any numeric loss knob.
- verl's learning-rate warm-up counted in rollout batches (`rollout_warmup_factor`).

The closed-loop entropy controller's law is `ce_gppo_trl.controller`.

Example:
    >>> prob_clip_schedule_weights("increase_decrease", 0.25)
    ScheduleWeights(high=0.5, low=0.0, phase=1, lam=0.5)
    >>> knob_schedule_value("linear", 25, 100, initial=1.0, final=0.0)
    0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .validation import check_finite, fail

PROB_CLIP_SCHEDULES = ("none", "increase_decrease", "decrease_increase_decrease", "oscillatory_decay")
KNOB_SCHEDULES = ("constant", "linear", "cosine", "step")


def check_prob_clip_schedule(schedule: str, split: float, od_min_ratio: float, *, allow_none: bool = True) -> None:
    """Refuse a clip-bound schedule that `prob_clip_schedule_weights` / `od_step` cannot run, naming the field.

    Example:
        >>> check_prob_clip_schedule("increase_decrease", 0.5, 1.2)
        Traceback (most recent call last):
        ...
        ValueError: od_min_ratio=1.2 is not allowed: expected a number in the open interval (0, 1).
    """
    allowed = PROB_CLIP_SCHEDULES if allow_none else PROB_CLIP_SCHEDULES[1:]
    if schedule not in allowed:
        fail("prob_clip_schedule", schedule, f"expected one of {list(allowed)}")
    for name, value in (("prob_clip_schedule_split", split), ("od_min_ratio", od_min_ratio)):
        check_finite(name, value)
        if not 0 < value < 1:
            fail(name, value, "expected a number in the open interval (0, 1)")


def check_knob_schedule(
    schedule: str,
    *,
    final: float | None = None,
    steps: Sequence[int] | None = (),
    values: Sequence[float] | None = (),
    prefix: str = "",
) -> None:
    """Refuse a knob schedule that `knob_schedule_value` cannot run; the fields are named `{prefix}schedule`,
    `{prefix}final`, `{prefix}steps`, `{prefix}values` (the config's `beta1_*`, the callback's own arguments).

    Example:
        >>> check_knob_schedule("linear", prefix="beta1_")
        Traceback (most recent call last):
        ...
        ValueError: beta1_final=None is not allowed: a 'linear' schedule needs a final value >= 0.
    """
    if schedule not in KNOB_SCHEDULES:
        fail(f"{prefix}schedule", schedule, f"expected one of {list(KNOB_SCHEDULES)}")
    if schedule in ("linear", "cosine"):
        if final is None:
            fail(f"{prefix}final", final, f"a {schedule!r} schedule needs a final value >= 0")
        check_finite(f"{prefix}final", final)
        if final < 0:
            fail(f"{prefix}final", final, "expected a finite number >= 0")
    if schedule != "step":
        return
    if not steps or values is None or len(steps) != len(values):
        fail(f"{prefix}steps/{prefix}values", (steps, values), "a 'step' schedule needs as many values as steps")
    if any(not isinstance(step, int) or step < 0 for step in steps) or list(steps) != sorted(set(steps)):
        fail(f"{prefix}steps", steps, "expected strictly increasing integers >= 0")
    for value in values:
        check_finite(f"{prefix}values", value)
        if value < 0:
            fail(f"{prefix}values", values, "expected finite numbers >= 0")


def check_total_steps(total_steps: int | None, what: str) -> int:
    if total_steps is None or total_steps <= 0:
        raise ValueError(
            f"max_steps={total_steps!r} is not allowed: {what} needs the run length; set max_steps > 0 "
            "(or a train dataset with a length, so that the Trainer can compute it)."
        )
    return total_steps


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


def prob_clip_schedule_weights(name: str, progress: float, split: float = 0.5, od_state: int = 0) -> ScheduleWeights:
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
        >>> prob_clip_schedule_weights("decrease_increase_decrease", 0.75)
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
    fail("prob_clip_schedule", name, f"expected one of {list(PROB_CLIP_SCHEDULES)}")


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
    check_knob_schedule(kind, final=final)
    progress = min(step / check_total_steps(total_steps, f"a {kind!r} knob schedule"), 1.0)
    if kind == "linear":
        return initial + (final - initial) * progress
    return final + (initial - final) * (1 + math.cos(math.pi * progress)) / 2


def rollout_warmup_factor(step: int, *, updates_per_rollout: int, warmup_rollouts: int) -> float:
    """Learning-rate factor of optimizer update `step` (0-based) under verl's constant warm-up counted in rollout
    batches: verl steps its scheduler once per rollout batch, so every update of rollout batch `k` gets
    `min(1, k / warmup_rollouts)`, and the whole first batch trains at lr 0.

    Example:
        >>> [rollout_warmup_factor(u, updates_per_rollout=2, warmup_rollouts=2) for u in range(6)]
        [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    """
    return min(1.0, (step // updates_per_rollout) / max(1, warmup_rollouts))
