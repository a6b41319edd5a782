"""The closed-loop entropy controller's law, as a pure function of the measured entropy and the controller's memory.

`controller_update` is one step: a PI law on the relative entropy error `(target - H) / target`, whose P term reads
the entropy extrapolated `horizon` steps along its measured slope (look-ahead), rate-limited, with anti-windup by
conditional integration and a count of the steps the command sits saturated at a limit. `ControllerState` is its
memory (floats, ints and None, so it saves to JSON and resumes exactly). No trainer state:
`ce_gppo_trl.callbacks.EntropyControllerCallback` measures the entropy, calls this and turns the command into loss
knobs; `CONTROLLER_DEFAULTS` are the gains that callback and `CEGPPOConfig`'s `entropy_controller_*` fields share.

Example:
    >>> state, error = controller_update(ControllerState(), target=2.0, entropy=1.0, kp=1.0, ki=0.1, max_rate=1.0)
    >>> error, state.output  # 1.0 * 0.5 + 0.1 * 0.5 (no slope measured yet)
    (0.5, 0.55)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .validation import check_finite, fail

# Its defaults, for EntropyControllerCallback and CEGPPOConfig's entropy_controller_* fields alike: chosen on the plant
# family of benchmarks/controller.py and checked on a plant kept out of the choice (benchmarks/RESULTS.md, section 13).
CONTROLLER_DEFAULTS = {"kp": 0.5, "ki": 0.03, "max_delta": 1.0, "max_rate": 0.2, "horizon": 8}
# What the command moves (`entropy_controller_actuator`): CE-GPPO's betas, the clip half-widths, the weights of the
# probability-dependent bounds, the ERC band, or a signed entropy term in the loss.
CONTROLLER_ACTUATORS = ("betas", "clip", "prob_clip", "erc", "entropy")
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


# The laws EntropyControllerCallback can run: `measured_update`, `controller_update`, and `controller_update` scaled by
# the measured gain (`scaled_pi_coefficient`).
CONTROLLER_LAWS = ("measured", "pi", "scaled_pi")


def resolve_law(law: str | None, actuator: str) -> str:
    """The law a controller runs: `law`, or by default 'measured' for the signed entropy term
    (`actuator="entropy"`), whose gain can be measured, and 'pi' for the clip-family knobs.

    Example:
        >>> resolve_law(None, "entropy"), resolve_law(None, "betas"), resolve_law("pi", "entropy")
        ('measured', 'pi', 'pi')
    """
    if law is not None:
        return law
    return "measured" if actuator == "entropy" else "pi"


# The measured-gain law (`measured_update`): its defaults, for EntropyControllerCallback and CEGPPOConfig alike, chosen
# on the middle decade of gains of the simulated plant family in tests/test_controller_plants.py.
MEASURED_DEFAULTS = {"rate": 0.35, "max_lag": 4, "default_lag": 1, "measure_steps": 4}
# Weights of the newest value in the exponential averages of the measured entropy (1: none; averaging it only added
# lag on the plant family), gain (in log space: a gain is a scale) and drift, and of the newest step in the
# realised-response regression (about 10 steps).
ENTROPY_WEIGHT, GAIN_WEIGHT, DRIFT_WEIGHT, RESPONSE_WEIGHT = 1.0, 0.7, 0.3, 0.1
# Steps of realised response before the delay and scale identified from it replace `default_lag` and 1.
RESPONSE_WARMUP = 6
# Bounds of the identified scale of the first-order prediction (measured gain and drift against realised changes).
SCALE_LIMITS = (0.25, 4.0)


@dataclass(frozen=True)
class MeasuredState:
    """Memory of the measured-gain law (`measured_update`); floats, ints, None and lists of floats, so that it saves
    to JSON and resumes exactly.

    - `entropy`: averaged measured entropy; `last_entropy`: the last raw measurement (None before the first).
    - `log_gain`: averaged log of the measured gain `b` (None before the first); `drift`: averaged measured drift
      `d` (nats per step); `last_drift`: the averaged drift when the last command was decided.
    - `momenta`: Adam's first moment of the coefficient as the law models it (`beta1`-average of the commands), the
      newest last, one per step of the longest delay considered plus one.
    - `response_xy`, `response_xx` (one per candidate delay), `response_yy`, `responses`: averaged moments of the
      realised entropy changes against the changes the measurements predict, for the delay and scale.
    - `lag`, `scale`: the identified delay (steps) and scale of the first-order prediction.
    - `output`: the coefficient last decided; `saturated_steps`: consecutive steps the target is out of reach.
    - `step`: number of updates.
    """

    entropy: float | None = None
    last_entropy: float | None = None
    log_gain: float | None = None
    drift: float = 0.0
    last_drift: float = 0.0
    momenta: tuple[float, ...] = (0.0,) * (MEASURED_DEFAULTS["max_lag"] + 2)
    response_xy: tuple[float, ...] = (0.0,) * (MEASURED_DEFAULTS["max_lag"] + 1)
    response_xx: tuple[float, ...] = (0.0,) * (MEASURED_DEFAULTS["max_lag"] + 1)
    response_yy: float = 0.0
    responses: int = 0
    lag: int = MEASURED_DEFAULTS["default_lag"]
    scale: float = 1.0
    output: float = 0.0
    saturated_steps: int = 0
    step: int = 0


def _average(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1 - weight) * old + weight * new


def measured_update(
    state: MeasuredState,
    *,
    target: float,
    entropy: float,
    gain: float | None,
    drift: float | None,
    beta1: float,
    max_coef: float,
    rate: float = MEASURED_DEFAULTS["rate"],
    moment: float | None = None,
) -> tuple[MeasuredState, float]:
    """One step of the measured-gain law; returns the new state and the relative error `(target - H) / target`.

    The entropy coefficient `c` enters the loss as `L - c * mean(H)`. Its effect on the entropy per unit, through the
    optimizer, is the measured gain `b = g_H . P g_H >= 0` (`g_H = grad_theta H`, `P` Adam's preconditioner with the
    learning rate, bias correction and clipping scale), and the rest of the update moves the entropy by the measured
    drift `d` per step (`g_H . delta_theta` less the term's own share; `attribution.EntropyGainMeter`). Adam's first
    moment spreads a coefficient over the following steps: the coefficient that acts at a step is `m`, the
    `beta1`-average of the commands (`momenta`), or the measured one (`moment`). The law asks
    the entropy to close a share `rate` of its error each step:

        m* = (rate * (H* - H_pred) - s d) / (s b)         the first moment that does it
        c  = clip((m* - beta1 * m) / (1 - beta1), -max_coef, max_coef)     Adam's average inverted

    with `H_pred = H + s b * (moments already in the pipe) + lag * s d`, the entropy the commands already decided will
    have reached when this one acts. The delay `lag` (0 to `max_lag` steps) and the scale `s` of the first-order
    prediction are identified from the realised entropy changes: the lag whose prediction `s (b m_{t-lag} + d)`
    leaves the smallest residual, and its least-squares `s`, within `SCALE_LIMITS`. Dividing by `b` makes the loop's
    speed the same on a model whose entropy responds ten times more or less; `s` absorbs a biased measurement, and
    the drift term plays the integral's part (it settles where the command cancels the drift). Measurements
    (`gain`, `drift`) may be None on steps without one: the averages hold. `moment`, when measured, is the first
    moment that really acted in the step just measured (the entropy term's share of the update over `b`); it
    replaces the modelled one, whose `beta1`-average assumes every batch's entropy gradient points the same way.

    Out of reach: `saturated_steps` counts consecutive steps where the coefficient that would cancel the drift,
    `-d / b`, exceeds `max_coef` on the side the error pushes, or the command sits at `max_coef` while the error does
    not shrink.

    Example:
        >>> state, error = measured_update(MeasuredState(), target=1.0, entropy=0.8, gain=0.1, drift=-0.01,
        ...                                beta1=0.9, max_coef=1.0)
        >>> # H_pred = 0.8 - 0.01 (one step of drift), m* = (0.35 * 0.21 + 0.01) / 0.1 = 0.835: c = 8.35, capped
        >>> round(error, 3), round(state.output, 3)
        (0.2, 1.0)
    """
    if not target > 0:
        raise ValueError(f"target={target!r} is not allowed: expected an entropy > 0 (nats).")
    lags = len(state.response_xx)
    log_gain = (
        state.log_gain if gain is None or not gain > 0 else _average(state.log_gain, math.log(gain), GAIN_WEIGHT)
    )
    drift_avg = (
        state.drift
        if drift is None
        else (drift if state.log_gain is None else _average(state.drift, drift, DRIFT_WEIGHT))
    )
    xy, xx, yy, responses = list(state.response_xy), list(state.response_xx), state.response_yy, state.responses
    lag, scale = state.lag, state.scale
    if state.last_entropy is not None and state.log_gain is not None:
        change, b_then = entropy - state.last_entropy, math.exp(state.log_gain)
        yy = _average(yy, change * change, RESPONSE_WEIGHT)
        for candidate in range(lags):
            predicted = b_then * state.momenta[-1 - candidate] + state.last_drift
            xy[candidate] = _average(xy[candidate], predicted * change, RESPONSE_WEIGHT)
            xx[candidate] = _average(xx[candidate], predicted * predicted, RESPONSE_WEIGHT)
        responses += 1
        if responses >= RESPONSE_WARMUP:
            residual = [yy - xy[k] ** 2 / xx[k] if xx[k] > 0 else math.inf for k in range(lags)]
            lag = min(range(lags), key=residual.__getitem__)
            if xx[lag] > 0:
                scale = min(max(xy[lag] / xx[lag], SCALE_LIMITS[0]), SCALE_LIMITS[1])
    averaged = _average(state.entropy, entropy, ENTROPY_WEIGHT)
    error = (target - entropy) / target
    momenta = state.momenta if moment is None else (*state.momenta[:-1], moment)
    if log_gain is None:  # nothing measured yet: no command
        command = 0.0
        saturated = 0
    else:
        gain_s, drift_s = math.exp(log_gain) * scale, drift_avg * scale
        in_pipe = sum(momenta[len(momenta) - lag :]) if lag else 0.0
        predicted = averaged + gain_s * in_pipe + lag * drift_s
        wanted = (rate * (target - predicted) - drift_s) / gain_s
        raw = (wanted - beta1 * momenta[-1]) / (1 - beta1)
        command = min(max(raw, -max_coef), max_coef)
        # Out of reach: cancelling the drift alone takes more than the limit on the side the error pushes, or the
        # command asks for more than the limit while the error does not shrink.
        hold = -drift_s / gain_s
        beyond = abs(hold) > max_coef and hold * error > 0
        at_limit = abs(raw) > max_coef and raw * error > 0
        previous = None if state.last_entropy is None else abs(target - state.last_entropy) / target
        not_closing = previous is not None and abs(error) >= previous - 0.01
        saturated = state.saturated_steps + 1 if beyond or (at_limit and not_closing) else 0
    momenta = (*momenta[1:], beta1 * momenta[-1] + (1 - beta1) * command)
    new = MeasuredState(
        entropy=averaged,
        last_entropy=entropy,
        log_gain=log_gain,
        drift=drift_avg,
        last_drift=drift_avg,
        momenta=momenta,
        response_xy=tuple(xy),
        response_xx=tuple(xx),
        response_yy=yy,
        responses=responses,
        lag=lag,
        scale=scale,
        output=command,
        saturated_steps=saturated,
        step=state.step + 1,
    )
    return new, error


def scaled_pi_coefficient(output: float, *, max_delta: float, gain: float | None, reference_gain: float) -> float:
    """The gain-scaled PI (an ablation of `measured_update`): today's command `output` in `[-1, 1]` as a coefficient
    `max_delta * output * reference_gain / gain`, within `[-max_delta, max_delta]`; `max_delta * output` before the
    first measurement.

    Example:
        >>> scaled_pi_coefficient(0.5, max_delta=1.0, gain=0.2, reference_gain=0.1)
        0.25
    """
    coefficient = max_delta * output * (1.0 if gain is None or not gain > 0 else reference_gain / gain)
    return min(max(coefficient, -max_delta), max_delta)


def check_controller_settings(
    *,
    targets: Sequence[float | None],
    actuator: str,
    kp: float,
    ki: float,
    max_delta: float,
    max_rate: float,
    horizon: float,
    saturation_steps: int,
    require_target: bool = True,
) -> None:
    """Refuse controller settings `controller_update` cannot run, under the config's `entropy_controller_*` names.

    `targets`: the target entropy and, for a linear trajectory, its final value (None where unset).

    Example:
        >>> check_controller_settings(targets=[1.0], actuator="clip", kp=-0.5, ki=0.03, max_delta=1.0, max_rate=0.2,
        ...     horizon=8, saturation_steps=10)
        Traceback (most recent call last):
        ...
        ValueError: entropy_controller_kp=-0.5 is not allowed: expected a finite number >= 0.
    """
    if require_target and (not targets or targets[0] is None):
        fail("entropy_controller_target", None, "the entropy controller needs a target entropy (nats, > 0)")
    for name, value in zip(("entropy_controller_target", "entropy_controller_target_final"), targets, strict=False):
        if value is not None:
            check_finite(name, value)
            if value <= 0:
                fail(name, value, "expected an entropy > 0 (nats)")
    gains = {"kp": kp, "ki": ki, "max_delta": max_delta, "max_rate": max_rate, "horizon": horizon}
    for name, value in gains.items():
        check_finite(f"entropy_controller_{name}", value)
        if value < 0:
            fail(f"entropy_controller_{name}", value, "expected a finite number >= 0")
    if not isinstance(saturation_steps, int) or isinstance(saturation_steps, bool) or saturation_steps < 1:
        fail("entropy_controller_saturation_steps", saturation_steps, "expected an integer >= 1")
    if actuator not in CONTROLLER_ACTUATORS:
        fail("entropy_controller_actuator", actuator, f"expected one of {list(CONTROLLER_ACTUATORS)}")


def check_erc_actuator(actuator: str, erc_enabled: bool) -> None:
    """The ERC band can only be moved with ERC on."""
    if actuator == "erc" and not erc_enabled:
        fail("entropy_controller_actuator", actuator, "the ERC band only acts with ERC on: set erc_low and erc_high")


def check_controller_law(
    law: str | None,
    actuator: str,
    *,
    rate: float,
    measure_steps: int,
    reference_gain: float | None,
    enabled: bool = True,
) -> None:
    """Refuse settings of the law (`entropy_controller_law`, `_rate`, `_measure_steps`, `_reference_gain`) that
    `measured_update` / `scaled_pi_coefficient` cannot run, or a measured law on an actuator whose gain is not
    measured (only the signed entropy term's is)."""
    if law not in (None, *CONTROLLER_LAWS):
        fail("entropy_controller_law", law, f"expected None or one of {CONTROLLER_LAWS}")
    check_finite("entropy_controller_rate", rate)
    if not 0 < rate <= 1:
        fail("entropy_controller_rate", rate, "expected a share of the error in (0, 1]")
    if not isinstance(measure_steps, int) or isinstance(measure_steps, bool) or measure_steps < 1:
        fail("entropy_controller_measure_steps", measure_steps, "expected an integer >= 1")
    if reference_gain is not None:
        check_finite("entropy_controller_reference_gain", reference_gain)
        if reference_gain <= 0:
            fail("entropy_controller_reference_gain", reference_gain, "expected None or a gain > 0")
    if enabled and resolve_law(law, actuator) != "pi" and actuator != "entropy":
        fail(
            "entropy_controller_law",
            law,
            f"the measured gain is the signed entropy term's: it needs entropy_controller_actuator='entropy', not "
            f"{actuator!r}; with {actuator!r} use entropy_controller_law='pi'",
        )
