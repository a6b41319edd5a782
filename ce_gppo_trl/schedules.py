"""Time-varying entropy control, as pure functions of the step, the run length and the measured entropy.

Everything here takes floats (and, for the clip bounds, tensors) and returns floats or tensors; no trainer state.
`ce_gppo_trl.callbacks` turns these into `TrainerCallback`s. Notation follows `PAPERS.md` section 3
(arXiv 2602.09782): step `k` of `T` (`max_steps`), `p_old = pi_old(a|s)`, `eps_std` the ordinary clip half-width.

- Probability-dependent clip bounds: `prob_clip_upper` is H(p) (used for `epsilon_high`, A > 0), `prob_clip_lower`
  is M(p) (used for `epsilon_low`, A < 0); `mix_bound` blends them with `eps_std`.
- Scheduled thresholds: `entropy_schedule_weights` gives, for ID and DID, the weights of H(p) and M(p) in the two
  bounds at progress `k / T`; `od_step` is one transition of the oscillatory-decay (OD) state machine.
- Knob schedules (`knob_schedule_value`): constant, linear, cosine or step changes of any numeric loss knob.
- The closed-loop entropy controller (`controller_update`): a PI law normalised by a gain and direction identified
  online by recursive least squares (`rls_update`), rate-limited, with anti-windup and saturation counting.

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
    """Memory of the adaptive entropy controller (`controller_update`); every field is a float, an int or a tuple,
    so that the state saves to JSON and resumes exactly.

    - `integral`: summed relative error (frozen while the output is saturated in the direction the error pushes).
    - `output`: the actuator command `u` in `[-1, 1]` last decided, dither included.
    - `pending`: the commands not yet seen in a measured entropy change, oldest first (`lag` of them).
    - `drift`, `gain`: the plant estimate `dH / scale = drift + gain * u` per step (recursive least squares), with
      `scale` the first measured entropy (a fixed unit, so that a moving target does not rescale the estimate).
    - `cov`: the RLS covariance `(P_dd, P_dg, P_gg)`; `noise`: running mean square of the RLS residual.
    - `sign`: the direction `u` takes to raise entropy, +1 or -1, flipped only on a confident opposite estimate.
    - `entropy`: the last measured entropy; `saturated_steps`: consecutive steps with `|u|` at a limit, the error
      pushing further and no authority left (estimated, or seen: the error not shrinking); `limit_error`: `|e|` when
      the command reached that limit; `step`: number of updates; `dither_sign`: the probe's sign in `output` (+1,
      -1, or 0 without dither).
    """

    integral: float = 0.0
    output: float = 0.0
    pending: tuple[float, ...] = ()
    drift: float = 0.0
    gain: float = 0.0
    cov: tuple[float, float, float] = (0.0, 0.0, 0.0)
    noise: float = 0.0
    sign: int = 1
    entropy: float | None = None
    scale: float | None = None
    saturated_steps: int = 0
    limit_error: float | None = None
    step: int = 0
    dither_sign: int = 0


def controller_init(*, gain: float, lag: int = 2, gain_std: float | None = None) -> ControllerState:
    """The controller state before the first step: prior plant gain `gain` (> 0, the designed direction; relative
    entropy change per step at `u = 1`), uncertain by `gain_std` (default `2 * gain`: the sign is not trusted), a
    drift of 0 +- `gain`, `lag` pending zeros. The residual noise starts at `gain / 4` and is then measured.

    Example:
        >>> controller_init(gain=0.02, lag=1).pending
        (0.0,)
    """
    std = 2 * gain if gain_std is None else gain_std
    return ControllerState(pending=(0.0,) * lag, gain=gain, cov=(gain**2, 0.0, std**2), noise=(gain / 4) ** 2)


def rls_update(
    theta: tuple[float, float],
    cov: tuple[float, float, float],
    u: float,
    y: float,
    *,
    forgetting: float,
    noise_var: float,
) -> tuple[tuple[float, float], tuple[float, float, float], float]:
    """One recursive-least-squares step for `y = theta[0] + theta[1] * u + noise`, with exponential forgetting.

    Written as the Kalman filter of a slowly drifting parameter, so that `cov = (P00, P01, P11)` is the covariance
    of the estimate itself: it is inflated by `1 / forgetting` (old data count less), then the measurement of
    variance `noise_var` is folded in. Returns the new estimate, covariance and the a-priori residual.

    Example:
        >>> theta, cov = (0.0, 0.0), (100.0, 0.0, 100.0)
        >>> for u, y in [(1.0, 3.0), (-1.0, -1.0), (1.0, 3.0), (-1.0, -1.0)]:
        ...     theta, cov, _ = rls_update(theta, cov, u, y, forgetting=1.0, noise_var=0.01)
        >>> [round(v, 2) for v in theta]
        [1.0, 2.0]
    """
    p00, p01, p11 = (c / forgetting for c in cov)
    residual = y - (theta[0] + theta[1] * u)
    # P phi and phi' P phi with phi = (1, u); P is symmetric, so phi' P = (P phi)'.
    a0, a1 = p00 + p01 * u, p01 + p11 * u
    k0, k1 = a0 / (noise_var + a0 + a1 * u), a1 / (noise_var + a0 + a1 * u)
    theta = (theta[0] + k0 * residual, theta[1] + k1 * residual)
    return theta, (p00 - k0 * a0, p01 - k0 * a1, p11 - k1 * a1), residual


def controller_update(
    state: ControllerState,
    *,
    target: float,
    entropy: float,
    kp: float,
    ki: float,
    max_rate: float,
    min_gain: float,
    max_gain_var: float,
    forgetting: float = 0.9,
    dither: float = 0.0,
    sign_confidence: float = 2.0,
    horizon: int = 0,
    target_ahead: float | None = None,
) -> tuple[ControllerState, float]:
    """One step of the adaptive entropy controller; returns the new state and the error `(target - H) / target`.

    The plant is identified, not assumed: the entropy change per step, in units of the first measured entropy
    (`scale`), is regressed on the command that caused it (`state.pending[0]`) by recursive least squares with
    forgetting (`rls_update`), giving a drift and a gain `dH/du` that follow the run. The command is then a PI law
    on the relative error `e = (target - H) / target`, normalised by that gain so that `kp` and `ki` are the share of
    the error closed per step whatever the model and knobs:

        u = sign * (kp * e_ahead + ki * sum(e)) * target / (scale * max(|gain|, min_gain))

    where `e_ahead` is the error of the entropy the estimate predicts `horizon` steps ahead (with the commands in
    flight, then the current one) against the target then (`target_ahead`, default `target`; a moving target is
    followed without a lag), so that the command lets go before the lag carries the entropy past the target;
    the integral, on the measured error, removes what the estimate gets wrong.

    kept `dither` away from `[-1, 1]`'s ends and moved by at most `max_rate` per step, plus a square-wave `dither`
    (period 4) that keeps the gain identifiable while `u` is steady. `sign` flips only when the estimated gain is
    opposite to it by more than `sign_confidence` standard errors. `max_gain_var` caps the gain's variance
    (covariance windup while `u` stays put). Anti-windup: the integral does not grow while `u` sits at a limit that
    the error pushes it against, and `ki * |sum(e)|` stays within one full command. `saturated_steps` counts the
    consecutive steps at such a limit while either the estimate says that even the full command does not move
    entropy towards the target (`drift + gain * u` of the error's opposite sign) or the relative error has not
    shrunk by a quarter since the limit was reached: no authority left, not a transient. The
    new command goes to the end of `pending`; the oldest one leaves.

    Example:
        >>> state = controller_init(gain=0.05, lag=1)
        >>> state, error = controller_update(state, target=2.0, entropy=1.0, kp=0.05, ki=0.0, max_rate=1.0,
        ...                                  min_gain=0.01, max_gain_var=1.0)
        >>> error, state.output  # 0.05 * 0.5 * 2.0 / (1.0 * 0.05) = 1
        (0.5, 1.0)
    """
    error = (target - entropy) / target
    drift, gain, cov, noise = state.drift, state.gain, state.cov, state.noise
    scale = entropy if state.scale is None else state.scale
    if state.entropy is not None:
        applied = state.pending[0] if state.pending else state.output
        change = (entropy - state.entropy) / scale
        (drift, gain), cov, residual = rls_update(
            (drift, gain), cov, applied, change, forgetting=forgetting, noise_var=noise
        )
        if cov[2] > max_gain_var:  # shrink the gain's variance by a congruence, which keeps the covariance valid
            shrink = math.sqrt(max_gain_var / cov[2])
            cov = (cov[0], cov[1] * shrink, max_gain_var)
        # The a-posteriori residual: the a-priori one also holds the estimate's own error, which would inflate it.
        residual = change - (drift + gain * applied)
        # A plain mean over the first steps (the prior noise is only a guess), a forgetting average after. Residuals
        # beyond 3 sigma count as 3 sigma: a change of the plant must move the estimate, not inflate the noise.
        weight = max(1 - forgetting, 1 / (state.step + 1))
        noise = (1 - weight) * noise + weight * min(residual**2, 9 * noise)
    sign = state.sign
    if gain * sign < 0 and abs(gain) > sign_confidence * math.sqrt(max(cov[2], 0.0)):
        sign = -sign
    # u per unit of relative error: the gain is per unit of `scale`, the error per unit of `target`.
    per_error = sign * target / (scale * max(abs(gain), min_gain))
    # The P term acts on the entropy predicted `horizon` steps ahead by the estimate, with the commands already in
    # flight (then the last one): it lets go before the lag carries the entropy past the target.
    commands = [*state.pending, *[state.output] * max(horizon - len(state.pending), 0)][:horizon]
    predicted = entropy + scale * sum(drift + gain * command for command in commands)
    target_ahead = target if target_ahead is None else target_ahead
    ahead = (target_ahead - predicted) / target_ahead
    integral = state.integral + error
    raw = per_error * (kp * ahead + ki * integral)
    if abs(raw) >= 1 and raw * per_error * error > 0:  # at a limit that the error pushes against: stop integrating
        integral = state.integral
        raw = per_error * (kp * ahead + ki * integral)
    if ki > 0:
        bound = 1 / (ki * abs(per_error))
        integral = min(max(integral, -bound), bound)
    # The PI command keeps a margin of `dither` from the limits, so that the probe always has its full amplitude.
    command = min(max(raw, dither - 1.0), 1.0 - dither)
    previous = state.output - state.dither_sign * dither
    command = min(max(command, previous - max_rate), previous + max_rate)
    # Saturated: the command has reached that limit (not just ramping towards it), and either the estimate says that
    # even the full command does not move entropy towards the target (drift + gain * u has the error's opposite
    # sign, or none; a gain of the wrong sign is no authority), or the error has not shrunk by a quarter since the
    # command reached the limit.
    limit = math.copysign(1.0, raw)
    authority = gain if gain * sign > 0 else 0.0
    at_limit = abs(raw) >= 1 and raw * per_error * error > 0 and abs(command) >= 1.0 - dither - 1e-9
    limit_error = (state.limit_error or abs(error)) if at_limit else None
    # Only with the estimated gain on the side of the sign: otherwise the sign is in doubt, not the authority.
    stalled = at_limit and abs(error) > 0.75 * limit_error and gain * sign > 0
    saturated = at_limit and ((drift + authority * limit) * error <= 0 or stalled)
    step = state.step + 1
    dither_sign = 1 if step % 4 < 2 else -1
    command += dither_sign * dither
    pending = (*state.pending[1:], command) if state.pending else ()
    new = ControllerState(
        integral=integral,
        output=command,
        pending=pending,
        drift=drift,
        gain=gain,
        cov=cov,
        noise=noise,
        sign=sign,
        entropy=entropy,
        scale=scale,
        saturated_steps=state.saturated_steps + 1 if saturated else 0,
        limit_error=limit_error,
        step=step,
        dither_sign=dither_sign if dither else 0,
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
