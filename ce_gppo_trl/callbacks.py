"""Entropy-control `TrainerCallback`s: scheduled clip bounds, knob schedules and a closed-loop entropy controller.

Each callback changes the loss knobs that `CEGPPOTrainer` reads at every `_compute_loss` (`ce_gppo_beta1`,
`ce_gppo_beta2`, `epsilon_low`, `epsilon_high`, `erc_low`, `erc_high`, and the weights of the
probability-dependent bounds `prob_clip_weight_low/high`). The trainer calls `bind(trainer)` on every callback that
has one, in its `__init__`, so a callback works the same whether passed as `callbacks=[...]` or attached from the
config by `callbacks_from_config`. Callbacks keep their state in `state_dict()` / `load_state_dict()`; the trainer
saves it in each checkpoint (`entropy_control_state.json`) and restores it on resume.

Timing: knob values for optimizer step `k` (0-based, `state.global_step` at `on_step_begin`) are set before its first
micro-batch; feedback (OD, controller) reads the entropy TRL logged during step `k` at `on_step_end` (the mean of the
step's micro-batch values, each already reduced over processes, so every rank takes the same decision) and acts from
step `k + 1`.

Example:
    ```python
    from ce_gppo_trl.callbacks import EntropyControllerCallback, ProbClipScheduleCallback

    trainer = CEGPPOTrainer(..., callbacks=[ProbClipScheduleCallback("increase_decrease"),
                                            EntropyControllerCallback(target=1.5)])
    ```
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from transformers import TrainerCallback

from .controller import (
    CONTROLLER_DEFAULTS,
    MEASURED_DEFAULTS,
    ControllerState,
    MeasuredState,
    check_controller_law,
    check_controller_settings,
    check_erc_actuator,
    controller_update,
    measured_update,
    resolve_law,
    scaled_pi_coefficient,
)
from .schedules import (
    check_knob_schedule,
    check_prob_clip_schedule,
    check_total_steps,
    knob_schedule_value,
    od_step,
    od_thresholds,
    prob_clip_schedule_weights,
)

logger = logging.getLogger(__name__)

# Knobs of the loss a callback may change: trainer attributes read at every `_compute_loss`.
KNOBS = ("ce_gppo_beta1", "ce_gppo_beta2", "epsilon_low", "epsilon_high", "erc_low", "erc_high")
# entropy_controller_actuator -> the knobs it moves.
_ACTUATOR_KNOBS = {
    "betas": ("ce_gppo_beta1", "ce_gppo_beta2"),
    "clip": ("epsilon_low", "epsilon_high"),
    "prob_clip": ("prob_clip_weight_low", "prob_clip_weight_high"),
    "erc": ("erc_low", "erc_high"),
    "entropy": ("entropy_control_coef",),
}
# Clip half-widths the controller may set: a band of width 0 or 1 would freeze or invert the ratio clip.
_CLIP_LIMITS = (0.0, 0.95)
# The tightest ERC band the controller sets: erc_low < 1 < erc_high as the config requires.
_ERC_TIGHTEST = (0.999, 1.001)


class EntropyControlCallback(TrainerCallback):
    """Base class: holds the bound trainer, measures the step's entropy and logs under `entropy_control/`."""

    # Whether the callback sets per-token bounds, which only this library's loss path can apply.
    needs_own_loss = False

    def __init__(self) -> None:
        self.trainer: Any = None
        self._entropy_start = 0

    def bind(self, trainer: Any) -> None:
        """Attach to a `CEGPPOTrainer`; called by the trainer's `__init__`."""
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` on resume."""

    def _require_trainer(self) -> Any:
        if self.trainer is None:
            raise RuntimeError(f"{type(self).__name__} must be passed to a CEGPPOTrainer, which binds it.")
        return self.trainer

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._entropy_start = len(self._require_trainer()._metrics["train"]["entropy"])

    def _measured_entropy(self) -> float | None:
        # TRL appends one globally reduced entropy per micro-batch; the step's value is their mean, as logged.
        values = self.trainer._metrics["train"]["entropy"][self._entropy_start :]
        return sum(values) / len(values) if values else None

    def _log(self, name: str, value: float) -> None:
        self.trainer._metrics["train"][f"entropy_control/{name}"].append(float(value))


class ProbClipScheduleCallback(EntropyControlCallback):
    """Scheduled probability-dependent clip bounds of arXiv 2602.09782: ID, DID or OD.

    Sets the trainer's `prob_clip_weight_high/low` (the weights of H(p) and M(p), see
    `schedules.prob_clip_schedule_weights`) at every step from `k / max_steps`, and for OD from the measured entropy.
    Logs `entropy_control/phase` and `entropy_control/lambda` (ID, DID) or `entropy_control/od_state` and
    `entropy_control/od_tau_high` (OD).

    Example:
        >>> callback = ProbClipScheduleCallback("oscillatory_decay", od_min_ratio=0.3)
        >>> callback.state_dict()
        {'od_state': 0, 'h_init': None}
    """

    needs_own_loss = True

    def __init__(self, schedule: str, *, split: float = 0.5, od_min_ratio: float = 0.2) -> None:
        super().__init__()
        check_prob_clip_schedule(schedule, split, od_min_ratio, allow_none=False)
        self.schedule, self.split, self.od_min_ratio = schedule, split, od_min_ratio
        # OD starts by lowering entropy (state 0) until it first reaches tau_low = od_min_ratio * H_init.
        self.od_state = 0
        self.h_init: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"od_state": self.od_state, "h_init": self.h_init}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.od_state, self.h_init = state["od_state"], state["h_init"]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        check_total_steps(state.max_steps, f"prob_clip_schedule={self.schedule!r}")

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_step_begin(args, state, control, **kwargs)
        weights = prob_clip_schedule_weights(
            self.schedule, state.global_step / state.max_steps, self.split, self.od_state
        )
        self.trainer.prob_clip_weight_high, self.trainer.prob_clip_weight_low = weights.high, weights.low
        if self.schedule == "oscillatory_decay":
            self._log("od_state", self.od_state)
        else:
            self._log("phase", weights.phase)
            self._log("lambda", weights.lam)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        entropy = self._measured_entropy()
        if self.schedule != "oscillatory_decay" or entropy is None:
            return
        if self.h_init is None:
            self.h_init = entropy
        # Thresholds at the next step's progress: the state decided here is the one step k + 1 uses.
        progress = state.global_step / state.max_steps
        self.od_state = od_step(self.od_state, entropy, progress, self.h_init, self.od_min_ratio)
        self._log("od_tau_high", od_thresholds(progress, self.h_init, self.od_min_ratio)[1])


class EntropyScheduleCallback(ProbClipScheduleCallback):
    """Deprecated name of `ProbClipScheduleCallback` (it schedules the clip bounds' weights, not the entropy)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            "EntropyScheduleCallback is deprecated: use ProbClipScheduleCallback (same arguments).",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)


class KnobScheduleCallback(EntropyControlCallback):
    """Schedule any numeric loss knob (`KNOBS`) over the run: constant, linear, cosine or step changes.

    The start value is the knob's value when the callback is bound (the config's), unless `initial` is given; see
    `schedules.knob_schedule_value` for the formulas.

    Example:
        >>> KnobScheduleCallback("ce_gppo_beta1", "step", steps=[585], values=[0.5]).knob
        'ce_gppo_beta1'
    """

    def __init__(
        self,
        knob: str,
        schedule: str,
        *,
        final: float | None = None,
        steps: Sequence[int] = (),
        values: Sequence[float] = (),
        initial: float | None = None,
    ) -> None:
        super().__init__()
        if knob not in KNOBS:
            raise ValueError(f"knob={knob!r} is not allowed: expected one of {list(KNOBS)}.")
        check_knob_schedule(schedule, final=final, steps=list(steps), values=list(values))
        self.knob, self.schedule, self.final = knob, schedule, final
        self.steps, self.values, self.initial = list(steps), list(values), initial

    def bind(self, trainer: Any) -> None:
        super().bind(trainer)
        if self.initial is None:
            self.initial = getattr(trainer, self.knob)
        if self.initial is None:
            raise ValueError(f"{self.knob}=None cannot be scheduled: enable it in the config first.")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.schedule in ("linear", "cosine"):
            check_total_steps(state.max_steps, f"a {self.schedule!r} schedule of {self.knob}")

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        value = knob_schedule_value(
            self.schedule,
            state.global_step,
            state.max_steps,
            initial=self.initial,
            final=self.final,
            steps=self.steps,
            values=self.values,
        )
        setattr(self._require_trainer(), self.knob, value)


class EntropyControllerCallback(EntropyControlCallback):
    """Closed-loop entropy control: holds the entropy on a target, above and below the uncontrolled run.

    After every optimizer step the controller (`controller.controller_update`) compares the step's entropy with the
    target (a float, a `(start, end)` pair for a linear trajectory over the run, or a callable
    `(step, max_steps) -> float`) and sets a command `u` in `[-1, 1]` by a PI law on the relative error
    `(target - H) / target`; the knobs follow `u` from their values at bind time (`*_ref`). `u > 0` is the side that
    raises entropy:

    - `actuator="entropy"` (the default): a signed entropy term in the loss, `L - max_delta * u * mean(H)` (TRL's bonus
      form over its tokens, `top_entropy_quantile` included: a bonus for `u > 0`, a penalty for `u < 0`), on this
      library's loss path. Its direction is known by
      construction (the term's gradient is the entropy's own), on every model.
    - `actuator="betas"` (CE-GPPO): `beta1 = max(beta1_ref - max_delta * u, 0)`,
      `beta2 = max(beta2_ref + max_delta * u, 0)`;
    - `actuator="clip"`: `epsilon_high = eps_high_ref + max_delta * u`, `epsilon_low = eps_low_ref - max_delta * u`,
      within `[0, 0.95]`;
    - `actuator="prob_clip"`: the bounds of arXiv 2602.09782, `u > 0` mixes H(p) into `epsilon_high` with weight
      `min(u * max_delta, 1)`, `u < 0` mixes M(p) into `epsilon_low` with weight `min(-u * max_delta, 1)`;
    - `actuator="erc"` (ERC on): `u > 0` narrows the ERC band's lower side towards 1 (tokens whose entropy fell get no
      gradient) and `u < 0` its upper side: `erc_low = 1 - (1 - erc_low_ref) * (1 - u)`, `erc_high` the mirror.

    The clip-family knobs act through the gradient's shape, so their direction and size depend on the model and data
    (benchmarks/RESULTS.md, section 13): where one works the other way or not at all, `u` runs into a limit and the
    saturation flag and warning say so.

    Logs `entropy_control/target`, `entropy_control/error` (relative), `entropy_control/output` (`u`) and
    `entropy_control/saturated` (1 once `u` has sat at a limit against a non-shrinking error for `saturation_steps`
    steps, with a single warning naming the limit).

    Example:
        >>> EntropyControllerCallback(target=(2.0, 1.0), kp=0.2).target_at(5, 10)
        1.5
    """

    def __init__(
        self,
        target: float | tuple[float, float] | Callable[[int, int], float] | None,
        *,
        actuator: str = "entropy",
        kp: float = CONTROLLER_DEFAULTS["kp"],
        ki: float = CONTROLLER_DEFAULTS["ki"],
        max_delta: float = CONTROLLER_DEFAULTS["max_delta"],
        max_rate: float = CONTROLLER_DEFAULTS["max_rate"],
        saturation_steps: int = 10,
        horizon: float = CONTROLLER_DEFAULTS["horizon"],
        law: str | None = None,
        rate: float = MEASURED_DEFAULTS["rate"],
        measure_steps: int = MEASURED_DEFAULTS["measure_steps"],
        reference_gain: float | None = None,
        knobs: str | None = None,
    ) -> None:
        super().__init__()
        if knobs is not None:
            warnings.warn(
                "EntropyControllerCallback(knobs=...) is deprecated: use actuator=... (the config field "
                "entropy_controller_knobs is now entropy_controller_actuator).",
                FutureWarning,
                stacklevel=2,
            )
            actuator = knobs
        if callable(target):
            targets = []  # a trajectory function: checked when called
        else:
            targets = list(target) if isinstance(target, (tuple, list)) else [target]
        check_controller_settings(
            targets=targets,
            actuator=actuator,
            kp=kp,
            ki=ki,
            max_delta=max_delta,
            max_rate=max_rate,
            horizon=horizon,
            saturation_steps=saturation_steps,
            require_target=not callable(target),
        )
        check_controller_law(law, actuator, rate=rate, measure_steps=measure_steps, reference_gain=reference_gain)
        self.law = resolve_law(law, actuator)
        self.target, self.actuator = target, actuator
        self.kp, self.ki, self.max_delta, self.max_rate = kp, ki, max_delta, max_rate
        self.saturation_steps, self.horizon = saturation_steps, horizon
        self.rate, self.measure_steps, self.reference_gain = rate, measure_steps, reference_gain
        self.needs_own_loss = actuator in ("prob_clip", "entropy")
        self.state = ControllerState()
        self.measured = MeasuredState()
        self.gain: float | None = None  # scaled_pi: the last measured gain
        self.meter: Any = None
        self.warned = False
        self.reference: dict[str, float] = {}

    def target_at(self, step: int, max_steps: int) -> float:
        """The target entropy at optimizer step `step` of `max_steps`."""
        if callable(self.target):
            return float(self.target(step, max_steps))
        if isinstance(self.target, (tuple, list)):
            start, end = self.target
            return start + (end - start) * step / check_total_steps(max_steps, "a target trajectory")
        return float(self.target)

    @property
    def measures(self) -> bool:
        """Whether the law needs the trainer's measurements of the gain and drift (`EntropyGainMeter`)."""
        return self.law != "pi"

    def bind(self, trainer: Any) -> None:
        super().bind(trainer)
        if self.measures:
            self.meter = trainer.entropy_gain_meter(self.measure_steps)
        self.reference = {name: getattr(trainer, name) for name in _ACTUATOR_KNOBS[self.actuator]}
        check_erc_actuator(self.actuator, self.reference.get("erc_low", 0.0) is not None)

    def state_dict(self) -> dict[str, Any]:
        state = {**dataclasses.asdict(self.state), "warned": self.warned}
        if self.measures:
            state.update(
                measured=dataclasses.asdict(self.measured), gain=self.gain, reference_gain=self.reference_gain
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.warned = state.pop("warned")
        measured = state.pop("measured", None)
        self.gain = state.pop("gain", None)
        self.reference_gain = state.pop("reference_gain", self.reference_gain)
        self.state = ControllerState(**state)
        if measured is not None:  # JSON gives lists back where the state holds tuples
            self.measured = MeasuredState(**{k: tuple(v) if isinstance(v, list) else v for k, v in measured.items()})

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.target_at(0, state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        entropy = self._measured_entropy()
        if entropy is None:
            return
        target = self.target_at(state.global_step - 1, state.max_steps)
        measurement = self.meter.take() if self.meter is not None else None
        if self.law == "measured":
            error, output, saturated = self._measured_step(target, entropy, measurement)
        else:
            error, output, saturated = self._pi_step(target, entropy, measurement)
        self._apply(output)
        if saturated and not self.warned:
            self.warned = True
            self._warn_saturated(target, entropy, error, output)
        self._log("target", target)
        self._log("error", error)
        self._log("output", output)
        self._log("saturated", float(saturated))

    def _pi_step(
        self, target: float, entropy: float, measurement: tuple[float, float] | None
    ) -> tuple[float, float, bool]:
        self.state, error = controller_update(
            self.state,
            target=target,
            entropy=entropy,
            kp=self.kp,
            ki=self.ki,
            max_rate=self.max_rate,
            horizon=self.horizon,
        )
        output = self.state.output
        if self.law == "scaled_pi":
            if measurement is not None:
                self.gain = measurement[0]
                self.reference_gain = self.reference_gain or self.gain
            coefficient = scaled_pi_coefficient(
                output, max_delta=self.max_delta, gain=self.gain, reference_gain=self.reference_gain or 1.0
            )
            output = coefficient / self.max_delta if self.max_delta else 0.0
        return error, output, self.state.saturated_steps >= self.saturation_steps

    def _measured_step(
        self, target: float, entropy: float, measurement: tuple[float, float] | None
    ) -> tuple[float, float, bool]:
        gain = drift = moment = None
        if measurement is not None:
            # The drift: the update's first-order entropy change without the entropy term's share; that share over
            # the gain is the coefficient's first moment as it really acted (its past gradients decorrelate).
            gain, predicted, share = measurement
            drift = predicted - share
            moment = share / gain if gain > 0 else None
        self.measured, error = measured_update(
            self.measured,
            target=target,
            entropy=entropy,
            gain=gain,
            drift=drift,
            moment=moment,
            beta1=self._adam_beta1(),
            max_coef=self.max_delta,
            rate=self.rate,
        )
        if self.measured.log_gain is not None:  # the meter logs the raw gain
            self._log("drift", self.measured.drift)
            self._log("lag", self.measured.lag)
            self._log("scale", self.measured.scale)
        output = self.measured.output / self.max_delta if self.max_delta else 0.0
        return error, output, self.measured.saturated_steps >= self.saturation_steps

    def _adam_beta1(self) -> float:
        optimizer = getattr(self.trainer.optimizer, "optimizer", self.trainer.optimizer)
        return float(optimizer.param_groups[0]["betas"][0])

    def _warn_saturated(self, target: float, entropy: float, error: float, output: float) -> None:
        if self.law == "measured":
            logger.warning(
                "Entropy controller saturated: for %d steps the target (%.4g) has been out of reach of the entropy "
                "coefficient's limit (entropy_controller_max_delta=%.4g): cancelling the measured drift alone takes "
                "%.4g, or the coefficient sits at its %s limit while the entropy does not approach. This run "
                "sustains about %.4g nats here: set a target near it, or raise entropy_controller_max_delta.",
                self.measured.saturated_steps,
                target,
                self.max_delta,
                abs(self.measured.drift / math.exp(self.measured.log_gain) / self.measured.scale)
                if self.measured.log_gain is not None
                else float("nan"),
                "upper" if error > 0 else "lower",
                entropy,
            )
            return
        logger.warning(
            "Entropy controller saturated: for %d steps the command has sat at its %s limit (%s) while the "
            "entropy (%.4g) stays %s the target (%.4g). These knobs have no more authority on this model and "
            "data (or, for a clip-family knob, act the other way here): widen entropy_controller_max_delta, "
            "pick another entropy_controller_actuator, or set a reachable target.",
            self.state.saturated_steps,
            "upper" if output > 0 else "lower",
            ", ".join(f"{k}={v:.4g}" for k, v in self.knob_values(1.0 if output > 0 else -1.0).items()),
            entropy,
            "below" if error > 0 else "above",
            target,
        )

    def _apply(self, output: float) -> None:
        for name, value in self.knob_values(output).items():
            setattr(self.trainer, name, value)

    def knob_values(self, output: float) -> dict[str, float]:
        """The knob values for the command `output` in `[-1, 1]`, from the reference values at bind time."""
        ref, delta = self.reference, self.max_delta * output
        if self.actuator == "betas":
            return {
                "ce_gppo_beta1": max(ref["ce_gppo_beta1"] - delta, 0.0),
                "ce_gppo_beta2": max(ref["ce_gppo_beta2"] + delta, 0.0),
            }
        if self.actuator == "clip":
            low, high = _CLIP_LIMITS
            return {
                "epsilon_low": min(max(ref["epsilon_low"] - delta, low), high),
                "epsilon_high": min(max(ref["epsilon_high"] + delta, low), high),
            }
        if self.actuator == "entropy":
            return {"entropy_control_coef": delta}
        if self.actuator == "prob_clip":
            return {
                "prob_clip_weight_low": min(max(-delta, 0.0), 1.0),
                "prob_clip_weight_high": min(max(delta, 0.0), 1.0),
            }
        raise_side, lower_side = min(max(output, 0.0), 1.0), min(max(-output, 0.0), 1.0)
        return {
            "erc_low": min(1 - (1 - ref["erc_low"]) * (1 - raise_side), _ERC_TIGHTEST[0]),
            "erc_high": max(1 + (ref["erc_high"] - 1) * (1 - lower_side), _ERC_TIGHTEST[1]),
        }


def callbacks_from_config(args: Any) -> list[EntropyControlCallback]:
    """The callbacks a `CEGPPOConfig` asks for (`prob_clip_schedule`, `beta1/2_schedule`, `entropy_controller`).

    Example:
        >>> from types import SimpleNamespace
        >>> args = SimpleNamespace(prob_clip_schedule="none", beta1_schedule="step", beta1_final=None,
        ...     beta1_steps=[585], beta1_values=[0.5], beta2_schedule="constant", entropy_controller=False)
        >>> [type(c).__name__ for c in callbacks_from_config(args)]
        ['KnobScheduleCallback']
    """
    callbacks: list[EntropyControlCallback] = []
    if args.prob_clip_schedule != "none":
        callbacks.append(
            ProbClipScheduleCallback(
                args.prob_clip_schedule, split=args.prob_clip_schedule_split, od_min_ratio=args.od_min_ratio
            )
        )
    for beta in ("beta1", "beta2"):
        schedule = getattr(args, f"{beta}_schedule")
        if schedule != "constant":
            callbacks.append(
                KnobScheduleCallback(
                    f"ce_gppo_{beta}",
                    schedule,
                    final=getattr(args, f"{beta}_final"),
                    steps=getattr(args, f"{beta}_steps") or (),
                    values=getattr(args, f"{beta}_values") or (),
                )
            )
    if args.entropy_controller:
        final = args.entropy_controller_target_final
        target = args.entropy_controller_target
        callbacks.append(
            EntropyControllerCallback(
                target if final is None or target is None else (target, final),
                actuator=args.entropy_controller_actuator,
                kp=args.entropy_controller_kp,
                ki=args.entropy_controller_ki,
                max_delta=args.entropy_controller_max_delta,
                max_rate=args.entropy_controller_max_rate,
                horizon=args.entropy_controller_horizon,
                saturation_steps=args.entropy_controller_saturation_steps,
                law=args.entropy_controller_law,
                rate=args.entropy_controller_rate,
                measure_steps=args.entropy_controller_measure_steps,
                reference_gain=args.entropy_controller_reference_gain,
            )
        )
    return callbacks
