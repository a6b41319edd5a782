"""`CEGPPOConfig`: TRL's `GRPOConfig` plus the knobs of CE-GPPO and Entropy Ratio Clipping."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from .losses import CLIPPED_LOSS_TYPES, POLICY_LOSSES

# Loss types the dual clip can act on: the PPO-style clipped surrogates.
DUAL_CLIP_LOSS_TYPES = CLIPPED_LOSS_TYPES


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is not allowed: {allowed}.")


def _check_finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        _fail(name, value, "expected a finite number")


def _check_range(name: str, value: float, low: float, high: float, *, high_open: bool = True) -> None:
    _check_finite(name, value)
    if value < low or (value >= high if high_open else value > high):
        _fail(name, value, f"expected {low} <= {name} {'<' if high_open else '<='} {high}")


@dataclass
class CEGPPOConfig(GRPOConfig):
    r"""Configuration for [`CEGPPOTrainer`]: every [`trl.GRPOConfig`] field, plus the ones below.

    The default `loss_type="ce_gppo"` is CE-GPPO (arXiv 2509.20712); every TRL loss type keeps its TRL meaning.
    CE-GPPO only differs from on-policy GRPO when updates are off-policy: set `steps_per_generation` to a multiple
    of `gradient_accumulation_steps` larger than it (the papers take 8 optimizer updates per rollout batch), or
    `num_iterations > 1`.

    Parameters:
        ce_gppo_beta1 (`float`, defaults to `0.5`):
            CE-GPPO gradient scale for tokens with `r < 1 - epsilon` and `A < 0` (NA&LP); pushes entropy down.
            The paper uses 0.5 (1.5B) and 0.75 (7B).
        ce_gppo_beta2 (`float`, defaults to `1.0`):
            CE-GPPO gradient scale for tokens with `r > 1 + epsilon_high` and `A > 0` (PA&LP); pushes entropy up.
        clip_ratio_c (`float` or `None`, defaults to `None`):
            Dual clip for negative advantages (loss capped at `-A * clip_ratio_c`); the authors' runs use 10.0.
            Applies to `ce_gppo` and the PPO-clipped TRL loss types.
        erc_low, erc_high (`float` or `None`, default `None`):
            Entropy Ratio Clipping band (arXiv 2512.05591): tokens whose entropy ratio `H_theta / H_old` lies outside
            `(erc_low, erc_high)` keep their loss value but get no gradient. Published band 0.95 / 1.05.
    """

    loss_type: str = field(
        default="ce_gppo",
        metadata={
            "help": "Policy loss. 'ce_gppo' (default) is CE-GPPO (arXiv 2509.20712): tokens outside the clip band "
            "keep a bounded gradient scaled by ce_gppo_beta1 (r < 1 - epsilon, A < 0) and ce_gppo_beta2 "
            "(r > 1 + epsilon_high, A > 0), with a token-level mean over the batch. Every TRL loss type "
            f"({', '.join(name for name in POLICY_LOSSES if name != 'ce_gppo')}) keeps its TRL meaning."
        },
    )
    ce_gppo_beta1: float = field(
        default=0.5,
        metadata={
            "help": "CE-GPPO gradient scale for tokens with r < 1 - epsilon and A < 0 (NA&LP, pushes entropy down). "
            "0 gives DAPO's gradient there, 1 is GPPO. Paper: 0.5 (1.5B), 0.75 (7B)."
        },
    )
    ce_gppo_beta2: float = field(
        default=1.0,
        metadata={
            "help": "CE-GPPO gradient scale for tokens with r > 1 + epsilon_high and A > 0 (PA&LP, pushes entropy "
            "up). 0 gives DAPO's gradient there, 1 is GPPO. Paper: 1.0."
        },
    )
    clip_ratio_c: float | None = field(
        default=None,
        metadata={
            "help": "Dual clip for negative advantages: the per-token loss is capped at -A * clip_ratio_c, so tokens "
            "with r > clip_ratio_c and A < 0 get no gradient. Must be > 1. The CE-GPPO authors use 10.0. None: off."
        },
    )
    erc_low: float | None = field(
        default=None,
        metadata={
            "help": "Entropy Ratio Clipping lower bound (arXiv 2512.05591): tokens with H_theta / H_old <= erc_low "
            "get no gradient (their loss value and token count are kept). Set with erc_high; published 0.95."
        },
    )
    erc_high: float | None = field(
        default=None,
        metadata={
            "help": "Entropy Ratio Clipping upper bound: tokens with H_theta / H_old >= erc_high get no gradient. "
            "Set with erc_low; published 1.05."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate_loss_fields()

    @property
    def erc_enabled(self) -> bool:
        return self.erc_low is not None

    @property
    def off_policy(self) -> bool:
        """Whether TRL computes `old_per_token_logps`, i.e. whether pi_theta can differ from pi_old in the loss.

        Mirrors the condition in `GRPOTrainer._generate_and_score_completions` (TRL 1.16).
        """
        generate_every = self.steps_per_generation * self.num_iterations
        vllm_is = self.use_vllm and self.vllm_importance_sampling_correction
        return self.gradient_accumulation_steps % generate_every != 0 or vllm_is

    def _validate_loss_fields(self) -> None:
        if self.loss_type not in POLICY_LOSSES:
            _fail("loss_type", self.loss_type, f"expected one of {sorted(POLICY_LOSSES)}")
        _check_range("epsilon", self.epsilon, 0.0, 1.0)
        if self.epsilon_high is not None:
            if self.loss_type == "cispo":  # TRL reuses epsilon_high as CISPO's absolute ratio cap (eps_max)
                _check_finite("epsilon_high", self.epsilon_high)
                if self.epsilon_high <= 0:
                    _fail("epsilon_high", self.epsilon_high, "CISPO's ratio cap must be > 0")
            else:
                _check_range("epsilon_high", self.epsilon_high, 0.0, 1.0)
        for name in ("ce_gppo_beta1", "ce_gppo_beta2"):
            value = getattr(self, name)
            _check_finite(name, value)
            if value < 0:
                _fail(name, value, "expected a finite number >= 0 (0 = DAPO's gradient, 1 = GPPO)")
        if self.clip_ratio_c is not None:
            _check_finite("clip_ratio_c", self.clip_ratio_c)
            if self.clip_ratio_c <= 1:
                _fail("clip_ratio_c", self.clip_ratio_c, "expected a number > 1, or None to disable the dual clip")
            if self.loss_type not in DUAL_CLIP_LOSS_TYPES:
                _fail(
                    "clip_ratio_c",
                    self.clip_ratio_c,
                    f"the dual clip applies to the clipped loss types {list(DUAL_CLIP_LOSS_TYPES)}, "
                    f"not loss_type={self.loss_type!r}; leave it None",
                )
        self._validate_erc()
        self._validate_composition()

    def _validate_erc(self) -> None:
        if (self.erc_low is None) != (self.erc_high is None):
            _fail(
                "erc_low/erc_high",
                (self.erc_low, self.erc_high),
                "set both bounds (e.g. 0.95 and 1.05) or neither",
            )
        if self.erc_low is None:
            return
        _check_finite("erc_low", self.erc_low)
        _check_finite("erc_high", self.erc_high)
        if not 0 <= self.erc_low < 1:
            _fail("erc_low", self.erc_low, "expected 0 <= erc_low < 1")
        if not self.erc_high > 1:
            _fail("erc_high", self.erc_high, "expected erc_high > 1")

    def _validate_composition(self) -> None:
        if self.use_liger_kernel:
            _fail(
                "use_liger_kernel",
                True,
                "CEGPPOTrainer computes its own policy loss and Liger kernels are not tested with it; "
                "use model_init_kwargs={'use_kernels': True} for Hub kernels instead",
            )
        if not self.uses_own_loss:
            return
        if self.entropy_coef != 0.0 or self.use_adaptive_entropy:
            _fail(
                "entropy_coef/use_adaptive_entropy",
                (self.entropy_coef, self.use_adaptive_entropy),
                f"TRL's entropy bonus is not combined with loss_type={self.loss_type!r}, clip_ratio_c or ERC "
                "(CE-GPPO steers entropy through ce_gppo_beta1/ce_gppo_beta2; the paper finds a static bonus "
                "unstable); set entropy_coef=0.0 and use_adaptive_entropy=False",
            )
        if self.loss_type == "ce_gppo":
            if self.importance_sampling_level != "token":
                _fail(
                    "importance_sampling_level",
                    self.importance_sampling_level,
                    "CE-GPPO's clip regions are per token (Eq. 8); use 'token' with loss_type='ce_gppo'",
                )
            if self.delta is not None:
                _fail(
                    "delta",
                    self.delta,
                    "the two-sided clip belongs to TRL's grpo-family losses; with loss_type='ce_gppo' bound "
                    "negative-advantage ratios with clip_ratio_c instead",
                )

    @property
    def uses_own_loss(self) -> bool:
        """Whether the loss needs this library's path rather than TRL's `_compute_loss`."""
        return self.loss_type == "ce_gppo" or self.clip_ratio_c is not None or self.erc_enabled
