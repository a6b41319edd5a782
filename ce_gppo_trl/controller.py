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
