"""Every arm of every study, defined once: a name and the `CEGPPOConfig` / `ce-gppo train` fields it overrides.

CE-GPPO follows the paper (eps 0.2 / 0.2, the authors' dual clip 10); DAPO's clip-higher bound is 0.2 / 0.28; ERC
uses the published band 0.95 / 1.05. `trainer="trl"` marks the baselines that the sweeps of `entropy_dynamics.py`
and `regime.py` run with TRL's own `GRPOTrainer` and loss.

Example:
    >>> ARMS["CE-GPPO (0.5, 1)"].fields["ce_gppo_beta1"]
    0.5
    >>> ce_gppo(1.0, 1.0, clip_ratio_c=None)["clip_ratio_c"] is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ERC = {"erc_low": 0.95, "erc_high": 1.05}
DAPO_CLIP = {"epsilon": 0.2, "epsilon_high": 0.28}
DAPO_OWN_LOSS = {"loss_type": "ce_gppo", "ce_gppo_beta1": 0.0, "ce_gppo_beta2": 0.0, **DAPO_CLIP}
"""DAPO's gradient on this library's loss path (which logs the clip regions and the entropy diagnostics):
CE-GPPO with beta1 = beta2 = 0 and DAPO's clip-higher bound, no dual clip."""


def ce_gppo(beta1: float, beta2: float, clip_ratio_c: float | None = 10.0, **extra: Any) -> dict[str, Any]:
    """CE-GPPO's fields at (beta1, beta2), eps 0.2 / 0.2 and dual clip `clip_ratio_c`, plus `extra`."""
    fields = {"loss_type": "ce_gppo", "epsilon": 0.2, "epsilon_high": 0.2, "clip_ratio_c": clip_ratio_c}
    return {**fields, "ce_gppo_beta1": beta1, "ce_gppo_beta2": beta2, **extra}


@dataclass(frozen=True)
class Arm:
    """A named set of config overrides."""

    name: str
    fields: dict[str, Any]


def _arms(*arms: Arm) -> dict[str, Arm]:
    return {arm.name: arm for arm in arms}


ARMS: dict[str, Arm] = _arms(
    Arm("GRPO", {"loss_type": "grpo", "epsilon": 0.2, "epsilon_high": 0.2}),
    Arm("DAPO", {"loss_type": "dapo", **DAPO_CLIP}),
    Arm("GPPO (1, 1)", ce_gppo(1.0, 1.0)),
    Arm("CE-GPPO (0.5, 1)", ce_gppo(0.5, 1.0)),
    Arm("CE-GPPO (0.75, 1)", ce_gppo(0.75, 1.0)),
    Arm("CE-GPPO (1, 0.5)", ce_gppo(1.0, 0.5)),
    Arm("CE-GPPO (0, 1)", ce_gppo(0.0, 1.0)),
    Arm("DAPO + ERC", {"loss_type": "dapo", **DAPO_CLIP, **ERC}),
    Arm("CE-GPPO (0.5, 1) + ID", ce_gppo(0.5, 1.0, prob_clip_schedule="increase_decrease")),
    # The controller's target is set per sweep from the measured start entropy (entropy_dynamics.controller_fields).
    Arm("CE-GPPO (0.5, 1) + controller", ce_gppo(0.5, 1.0, entropy_controller=True)),
    Arm("CE-GPPO (0.5, 1) + DID", ce_gppo(0.5, 1.0, prob_clip_schedule="decrease_increase_decrease")),
    Arm("CE-GPPO (0.5, 1) + OD", ce_gppo(0.5, 1.0, prob_clip_schedule="oscillatory_decay")),
)
"""The sweeps' methods (`entropy_dynamics.py`, `regime.py`)."""

RECIPE_ARMS: dict[str, Arm] = _arms(
    Arm("DAPO", {"ce_gppo_beta1": 0.0, "ce_gppo_beta2": 0.0, "epsilon_high": 0.28}),
    Arm("CE-GPPO (0.5, 1)", {"ce_gppo_beta1": 0.5, "ce_gppo_beta2": 1.0, "epsilon_high": 0.2}),
    Arm("GPPO", {"ce_gppo_beta1": 1.0, "ce_gppo_beta2": 1.0, "epsilon_high": 0.2}),
    Arm("DAPO + ERC", {"ce_gppo_beta1": 0.0, "ce_gppo_beta2": 0.0, "epsilon_high": 0.28, **ERC}),
)
"""Overrides of a `ce_gppo` recipe (`real_model_sweep.py`): the recipe's loss type, eps_low and dual clip stay."""

COVARIANCE_ARMS: dict[str, Arm] = _arms(
    Arm("ce_gppo", {"loss_type": "ce_gppo"}),
    Arm("clip_cov", {"loss_type": "clip_cov"}),
    Arm("kl_cov", {"loss_type": "kl_cov"}),
    # The two controls remove what each method adds: `dapo` is Clip-Cov's PPO surrogate without the detached tokens,
    # `kl_cov_no_penalty` is KL-Cov's unclipped surrogate without the |log r| penalty.
    Arm("dapo", {"loss_type": "dapo"}),
    Arm("kl_cov_no_penalty", {"loss_type": "kl_cov", "ppo_kl_coef": 0.0}),
)
"""Clip-Cov / KL-Cov beside CE-GPPO on the quickstart (`cov_losses.py`)."""

CONTROLLER_BASE = {
    "loss_type": "ce_gppo",
    "ce_gppo_beta1": 0.5,
    "ce_gppo_beta2": 1.0,
    "epsilon": 0.2,
    "epsilon_high": 0.2,
}
"""The controller study's CE-GPPO (0.5, 1), without dual clip (`controller.py`)."""

# The paired micro-experiments (`real_model_micro.py`): CE-GPPO without dual clip, the recipe's eps 0.2 / 0.2.
MICRO_ARMS: dict[str, Arm] = _arms(
    Arm("beta1=0", ce_gppo(0.0, 1.0, clip_ratio_c=None)),
    Arm("beta1=0.5", ce_gppo(0.5, 1.0, clip_ratio_c=None)),
    Arm("beta1=1", ce_gppo(1.0, 1.0, clip_ratio_c=None)),
    Arm("beta2=0.5", ce_gppo(0.5, 0.5, clip_ratio_c=None)),
    Arm("beta2=1.5", ce_gppo(0.5, 1.5, clip_ratio_c=None)),
    Arm("dapo", dict(DAPO_OWN_LOSS)),
    Arm("dapo+erc", {**DAPO_OWN_LOSS, **ERC}),
)
"""Arms of `real_model_micro.py` at the run's learning rate; `SMALL_LR_ARMS` repeat beta1 0 / 1 at lr / 10."""
SMALL_LR_ARMS = ("beta1=0", "beta1=1")
