"""A family of simulated entropy plants for the controller's laws: pure Python, a few milliseconds per run.

Each plant is an integrator of the coefficient's effect through Adam's first moment (`beta1`), after `delay` steps,
with gain `gain` (nats per step per unit coefficient at a steady coefficient), jumping to `gain * jump` at step
`JUMP_STEP`; a drift `-pull * (H - equilibrium)` towards a low equilibrium (the free run collapses) or a high one
(it explodes); noise on the entropy (`ENTROPY_NOISE` of it) and on what is measured; and measurements of the gain
and the drift off by a common factor `bias` (both come through the same preconditioner) and log-normal noise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

JUMP_STEP = 15
ENTROPY_NOISE = 0.02  # relative, on each measurement of the entropy
PROCESS_NOISE = 0.005  # relative, on the entropy itself each step
MEASUREMENT_NOISE = 0.2  # log-normal sigma of the measured gain and drift
# The outer ends of the 30x gain range [0.03, 1] and its middle decade (the only one the defaults were chosen on).
LOW_GAINS, MIDDLE_GAINS, HIGH_GAINS = (0.03, 0.04), (0.055, 0.17, 0.55), (0.75, 1.0)

# A law: (entropy, measured gain, measured drift, target) -> coefficient, with its own memory.
Law = Callable[[float, float, float, float], float]


@dataclass(frozen=True)
class Plant:
    gain: float
    pull: float
    equilibrium: float
    start: float = 1.0
    beta1: float = 0.9
    delay: int = 0
    bias: float = 1.0
    jump: float = 1.0
    steps: int = 40


def simulate(plant: Plant, law: Law, target: float, seed: int) -> tuple[list[float], list[float]]:
    """Runs `law` on `plant` for `plant.steps` steps; returns the relative errors |H - target| / target and the
    coefficients."""
    rng = random.Random(seed)
    entropy, moment, pipe, command = plant.start, 0.0, [0.0] * plant.delay, 0.0
    errors, commands = [], []
    for step in range(plant.steps):
        gain = plant.gain * (plant.jump if step >= JUMP_STEP else 1.0)
        pipe.append(command)
        moment = plant.beta1 * moment + (1 - plant.beta1) * pipe.pop(0)
        drift = -plant.pull * (entropy - plant.equilibrium)
        entropy = max(entropy + gain * moment + drift + rng.gauss(0, PROCESS_NOISE * entropy), 1e-3)
        measured = entropy * (1 + rng.gauss(0, ENTROPY_NOISE))
        gain_seen = gain * plant.bias * math.exp(rng.gauss(0, MEASUREMENT_NOISE))
        drift_seen = (drift * plant.bias + rng.gauss(0, 0.005)) * math.exp(rng.gauss(0, MEASUREMENT_NOISE))
        command = law(measured, gain_seen, drift_seen, target)
        errors.append(abs(entropy - target) / target)
        commands.append(command)
    return errors, commands


def second_half_error(errors: list[float]) -> float:
    """The issue's measure: the mean relative error over the second half of the run."""
    half = errors[len(errors) // 2 :]
    return sum(half) / len(half)


def plant_family(gains: tuple[float, ...], seed: int = 0) -> Iterator[tuple[Plant, float, dict]]:
    """Every gain x side (target above a collapsing free run, below an exploding one) x measurement bias (x0.25, 1,
    x4) x delay (0, 2, 4 steps) x mid-run gain jump (1, x3, /3); the pull towards the equilibrium is 0.1-0.5 of the
    gain (it comes through the same optimizer), at most 0.15 per step. Yields (plant, target, tags)."""
    rng = random.Random(seed)
    for gain in gains:
        for side in ("above", "below"):
            for bias in (0.25, 1.0, 4.0):
                for delay in (0, 2, 4):
                    for jump in (1.0, 3.0, 1 / 3):
                        pull = min(gain * math.exp(rng.uniform(math.log(0.1), math.log(0.5))), 0.15)
                        equilibrium, target = (
                            (0.1, rng.choice([0.5, 0.75])) if side == "above" else (2.0, rng.choice([1.25, 1.5]))
                        )
                        plant = Plant(gain=gain, pull=pull, equilibrium=equilibrium, bias=bias, delay=delay, jump=jump)
                        yield plant, target, {"side": side, "bias": bias, "delay": delay, "jump": jump, "gain": gain}


def family_errors(make_law: Callable[[], Law], gains: tuple[float, ...], seeds: int = 3) -> list[tuple[float, dict]]:
    """The second-half error of a fresh law on every plant of the family, for `seeds` noise seeds."""
    return [
        (second_half_error(simulate(plant, make_law(), target, seed)[0]), tags)
        for plant, target, tags in plant_family(gains)
        for seed in range(seeds)
    ]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]
