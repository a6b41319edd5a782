"""Every metric this library logs, in one registry: name, when it is logged and what it means.

The metrics reference of the docs site is generated from `METRICS`, and `tests/test_metrics.py` trains with every
feature on and fails when a logged name is neither here nor in `TRL_METRICS` (TRL's own metrics, which this library
keeps). A new metric is one `Metric(...)` entry below, next to the others of its prefix.

Names follow TRL's convention (`clip_ratio/low_mean`, `entropy`): grouped by prefix, `_mean` / `_min` / `_max` for
reductions. A `{placeholder}` in a name stands for each of the values listed in `Metric.values`.

Example:
    >>> metric_doc("entropy_dynamics/E2_grad_frac").name
    'entropy_dynamics/{region}_grad_frac'
    >>> metric_doc("clip_ratio/low_mean").when
    'every step'
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from .diagnostics import CLIP_REGIONS, QUADRANTS, TOKEN_GROUPS


@dataclass(frozen=True)
class Metric:
    """One logged metric (or a family, when `name` holds `{placeholder}`s expanded from `values`)."""

    name: str
    doc: str
    when: str = "every step"
    values: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """The prefix before the first `/` (the name itself for ungrouped metrics such as `entropy`)."""
        return self.name.split("/", 1)[0]

    def names(self) -> list[str]:
        """Every concrete name of this entry."""
        keys = re.findall(r"{(\w+)}", self.name)
        if not keys:
            return [self.name]
        return [
            self.name.format(**dict(zip(keys, combo, strict=True)))
            for combo in itertools.product(*(self.values[key] for key in keys))
        ]


_REGIONS = {"region": QUADRANTS + CLIP_REGIONS}

# This library's metrics. Grouped by prefix, in the order of the metrics reference.
METRICS: tuple[Metric, ...] = (
    Metric(
        "entropy",
        "Mean per-token entropy of the policy over completion tokens, at the sampling temperature (TRL's name and "
        "meaning; on this library's loss path it is computed there, from the same full-vocabulary entropies).",
    ),
    Metric(
        "clip_ratio/low_mean",
        "Share of completion tokens in NA&LP (`r < 1 - epsilon_low`, `A < 0`): clipped by PPO, scaled by `beta1` in "
        "CE-GPPO.",
    ),
    Metric("clip_ratio/high_mean", "Share of completion tokens in PA&LP (`r > 1 + epsilon_high`, `A > 0`)."),
    Metric("clip_ratio/region_mean", "Share of completion tokens in either clipped region."),
    Metric("clip_ratio/low_min", "Smallest per-sequence share of NA&LP tokens, over the sequences of all processes."),
    Metric("clip_ratio/high_max", "Largest per-sequence share of PA&LP tokens, over the sequences of all processes."),
    Metric(
        "clip_ratio/dual_mean",
        "Share of completion tokens the dual clip removes (`A < 0`, `r > clip_ratio_c`).",
        when="`clip_ratio_c` set",
    ),
    Metric(
        "cispo_clip_ratio",
        "Share of tokens whose ratio CISPO caps (TRL's metric, logged the same way on this library's path).",
        when="`loss_type: cispo` on this library's loss path",
    ),
    Metric(
        "vespo/phi_seq_mean",
        "Mean of VESPO's sequence weight `phi_seq` (TRL's metric, logged the same way on this library's path).",
        when="`loss_type: vespo` on this library's loss path",
    ),
    Metric(
        "clip_cov/selected_mean",
        "Share of loss tokens Clip-Cov detaches (verl logs it as `pg_clipfrac`).",
        when="`loss_type: clip_cov`",
    ),
    Metric(
        "kl_cov/selected_mean",
        "Share of loss tokens KL-Cov gives the `ppo_kl_coef x abs(log r)` penalty.",
        when="`loss_type: kl_cov`",
    ),
    Metric(
        "entropy_ratio/mean",
        "Mean of ERC's `rho = (H_theta + 1e-8) / (H_old + 1e-8)` over the completion tokens of all processes.",
        when="ERC on (`erc_low`, `erc_high`)",
    ),
    Metric("entropy_ratio/min", "Smallest `rho` over the completion tokens of all processes.", when="ERC on"),
    Metric("entropy_ratio/max", "Largest `rho` over the completion tokens of all processes.", when="ERC on"),
    Metric(
        "entropy_ratio/clip_low_mean",
        "Share of completion tokens ERC masks below the band (`rho <= erc_low`).",
        when="ERC on",
    ),
    Metric(
        "entropy_ratio/clip_high_mean",
        "Share of completion tokens ERC masks above the band (`rho >= erc_high`).",
        when="ERC on",
    ),
    Metric(
        "positive_nll",
        "Mean `-log p` over the tokens of correct responses (`positive_nll_reward` `> 0`): the authors' extra NLL "
        "term before its coefficient.",
        when="`positive_nll_coef > 0`",
    ),
    Metric(
        "dynamic_sampling/rounds",
        "Extra generation rounds of the rollout batch (0: the first round filled it). TRL's `reward`, `rewards/*`, "
        "`frac_reward_zero_std` and `completions/*` describe the first round only (the rollout batch's own "
        "prompts, as without dynamic sampling), not the refill rounds.",
        when="`dynamic_sampling: true`, once per rollout batch",
    ),
    Metric(
        "dynamic_sampling/groups_dropped",
        "Groups with all-equal rewards generated and filtered out, summed over processes and rounds.",
        when="`dynamic_sampling: true`",
    ),
    Metric(
        "dynamic_sampling/groups_refilled",
        "Groups of the rollout batch that came from extra rounds.",
        when="`dynamic_sampling: true`",
    ),
    Metric(
        "dynamic_sampling/groups_masked",
        "Slots no round could fill, masked out of the loss (no gradient, not in the token count).",
        when="`dynamic_sampling: true`",
    ),
    Metric(
        "entropy_control/epsilon_low",
        "Effective lower clip half-width, mean over completion tokens (per-token with probability-dependent bounds).",
        when="this library's loss path",
    ),
    Metric(
        "entropy_control/epsilon_high",
        "Effective upper clip half-width, mean over completion tokens.",
        when=("this library's loss path"),
    ),
    Metric(
        "entropy_control/beta1",
        "Current CE-GPPO `beta1` (after any schedule or controller).",
        when=("`loss_type: ce_gppo`"),
    ),
    Metric("entropy_control/beta2", "Current CE-GPPO `beta2`.", when="`loss_type: ce_gppo`"),
    Metric("entropy_control/erc_low", "Current lower ERC bound.", when="ERC on"),
    Metric("entropy_control/erc_high", "Current upper ERC bound.", when="ERC on"),
    Metric("entropy_control/phase", "ID / DID phase: 1 or 2.", when="`prob_clip_schedule`: ID or DID"),
    Metric(
        "entropy_control/lambda",
        "The schedule's `lambda_k`: 1 -> 0 over the first phase, 0 -> -1 over the second.",
        when="`prob_clip_schedule`: ID or DID",
    ),
    Metric(
        "entropy_control/od_state",
        "OD state: 1 raises entropy (H(p) on the upper bound), 0 lowers it (M(p) on the lower bound).",
        when="`prob_clip_schedule: oscillatory_decay`",
    ),
    Metric(
        "entropy_control/od_tau_high",
        "OD's current upper threshold `tau_high(k)`.",
        when="`prob_clip_schedule: oscillatory_decay`",
    ),
    Metric("entropy_control/target", "The controller's target entropy at this step.", when="`entropy_controller`"),
    Metric(
        "entropy_control/error",
        "The controller's relative error `(target - H) / target`.",
        when="`entropy_controller`",
    ),
    Metric(
        "entropy_control/output",
        "The controller's command `u` in [-1, 1] (`u > 0` raises entropy); with the default knobs the entropy "
        "coefficient is `entropy_controller_max_delta * u`.",
        when=("`entropy_controller`"),
    ),
    Metric(
        "entropy_control/gain",
        "Measured gain `b = g_H . P g_c`: the entropy change per step per unit of Adam's first moment of the entropy "
        "coefficient, through the optimizer's preconditioner `P` (`EntropyGainMeter`), on measured steps.",
        when="`entropy_controller` with `entropy_controller_law` 'measured' (default) or 'scaled_pi'",
    ),
    Metric(
        "entropy_control/predicted_change",
        "First-order entropy change `g_H . delta_theta` of the update the optimizer applied, on measured steps.",
        when="`entropy_controller` with `entropy_controller_law` 'measured' (default) or 'scaled_pi'",
    ),
    Metric(
        "entropy_control/drift",
        "The measured law's averaged drift `d`: the entropy change per step without its own term's share.",
        when="`entropy_controller` with `entropy_controller_law` 'measured' (default)",
    ),
    Metric(
        "entropy_control/lag",
        "The measured law's delay (steps) between a coefficient and its effect, identified from realised changes.",
        when="`entropy_controller` with `entropy_controller_law` 'measured' (default)",
    ),
    Metric(
        "entropy_control/scale",
        "The measured law's scale of its first-order prediction against the realised entropy changes.",
        when="`entropy_controller` with `entropy_controller_law` 'measured' (default)",
    ),
    Metric(
        "entropy_control/saturated",
        "1 while the command has sat at a limit, the error not shrinking, for `entropy_controller_saturation_steps` "
        "steps.",
        when="`entropy_controller`",
    ),
    Metric(
        "entropy_dynamics/{region}_token_frac",
        "Share of completion tokens in each quadrant of arXiv 2602.09782 (E1 `-log p < H`, `A > 0`; E2 `-log p > "
        "H`, `A > 0`; E3 `-log p < H`, `A < 0`; E4 `-log p > H`, `A < 0`; `A = 0` tokens are in none) and in the "
        "clipped regions NA&LP (`clip_low`) and PA&LP (`clip_high`).",
        when="`entropy_diagnostics` (default on), this library's loss path",
        values=_REGIONS,
    ),
    Metric(
        "entropy_dynamics/{region}_grad_frac",
        "Share of the gradient weight `sum |g|`, `g = -d loss / d log p`, in each quadrant / clipped region.",
        when="`entropy_diagnostics`, this library's loss path",
        values=_REGIONS,
    ),
    Metric(
        "entropy_dynamics/{region}_predicted_delta",
        "Tabular logit-space direction of the entropy change pushed by each quadrant / clipped region (a unit step "
        "on each token's own logit): a direction, not a forecast; `entropy_attribution/part/*` is the forecast.",
        when="`entropy_diagnostics`, this library's loss path",
        values=_REGIONS,
    ),
    Metric(
        "entropy_dynamics/predicted_delta",
        "Tabular logit-space direction `sum_t g_t * (-p_t * (log p_t + H_t))`, per unit step on each token's own "
        "logit: a direction, not a forecast of the step's entropy change (Pearson r 0.16 with it, RESULTS section "
        "4); `entropy_attribution/predicted` is the forecast.",
        when="`entropy_diagnostics`, this library's loss path",
    ),
    Metric(
        "entropy_attribution/realised",
        "Realised change of the step's mean token entropy: its own micro-batches (all processes), re-scored by a "
        "forward pass after the optimizer step, minus their entropy in the step's training forward pass.",
        when="`entropy_attribution_steps` > 0, on those steps",
    ),
    Metric(
        "entropy_attribution/predicted",
        "First-order prediction `grad_theta H . delta_theta` of `realised`, with `delta_theta` the parameter change "
        "the optimizer applied (read off the weights: exact for any optimizer).",
        when="`entropy_attribution_steps` > 0, on those steps",
    ),
    Metric(
        "entropy_attribution/part/{part}",
        "Exact split of `predicted` for Adam / AdamW: each token group's share of this step's gradient through the "
        "step's preconditioner (`erc_masked` and `dual_clip` tokens, NA&LP `clip_low`, PA&LP `clip_high`, then the "
        "quadrants E1..E4 of the other tokens), `momentum` carried from earlier steps, `weight_decay`, and "
        "`other` (the rest of the gradient: zero-advantage tokens, an entropy term, aux loss). The parts add up to "
        "`predicted`.",
        when="`entropy_attribution_steps` > 0 with torch's Adam / AdamW; groups that apply to the loss",
        values={"part": TOKEN_GROUPS + ("momentum", "weight_decay", "other")},
    ),
    Metric(
        "entropy_attribution/part/unattributed",
        "The whole of `predicted`, for an optimizer whose step the attribution does not decompose (warned once).",
        when="`entropy_attribution_steps` > 0 with an optimizer other than torch's Adam / AdamW",
    ),
)

# TRL 1.16's own `GRPOTrainer` metrics, which this library keeps with TRL's meaning (documented by TRL). A regular
# expression per family, so that the test can tell a new metric of this library's from one of TRL's.
TRL_METRICS: dict[str, str] = {
    r"loss|grad_norm|learning_rate|epoch|step|step_time|num_tokens": "Trainer and GRPOTrainer bookkeeping",
    r"reward|reward_std|frac_reward_zero_std": "reward of the group-normalised rollouts",
    r"rewards/[^/]+/(mean|std)": "per reward function, logged under its `__name__`",
    r"completions/(mean|min|max)_length|completions/(mean|min|max)_terminated_length|completions/clipped_ratio": (
        "completion lengths and truncation"
    ),
    r"kl": "KL to the reference model (`beta > 0`)",
    r"policy_loss|entropy_coef": "TRL's loss parts and adaptive entropy coefficient (`use_adaptive_entropy`)",
    r"tools/(call|failure)_frequency": "tool calls of agentic rollouts",
    r"aux_loss": "router auxiliary loss of mixture-of-experts models",
    r"clip_ratio/region_mean|clip_ratio/low_mean|clip_ratio/high_mean|clip_ratio/low_min|clip_ratio/high_max": (
        "TRL's clip shares (this library logs the same names, with CE-GPPO's regions)"
    ),
    r"entropy": "mean token entropy",
    r"sampling/.+": "vLLM importance-sampling statistics",
    r"cispo_clip_ratio|vespo/phi_seq_mean": "CISPO / VESPO statistics",
    r"train_runtime|train_samples_per_second|train_steps_per_second|total_flos|train_loss": "end-of-training summary",
    r"eval_.+": "evaluation (`eval_strategy`), TRL's names with transformers' `eval_` prefix",
}


def _index() -> dict[str, Metric]:
    return {name: metric for metric in METRICS for name in metric.names()}


def metric_doc(name: str) -> Metric | None:
    """The registry entry of a logged metric name, or None when this library does not log it."""
    return _index().get(name)


def is_trl_metric(name: str) -> bool:
    """Whether `name` is one of TRL's (or transformers') own metrics, which this library keeps."""
    return any(re.fullmatch(pattern, name) for pattern in TRL_METRICS)
