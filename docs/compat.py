"""Which TRL 1.16 `GRPOConfig` fields work with which loss type: the table of `docs/trl-compatibility.md`.

Every cell is measured, not written by hand: `CEGPPOConfig(loss_type=..., **probe)` is built with a non-default
value of the field (its probe) and the cell says `yes` or the refusal. The notes say how the field acts on this
library's loss path; `tests/test_compat.py` checks that the table lists every `GRPOConfig` field, that the docs
file is this module's output, and that every refusal in `REFUSED` still raises. A docs generator beside
`docs/hooks.py`, not part of the installed package:

    python docs/compat.py > docs/trl-compatibility.md
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from transformers import TrainingArguments
from trl import GRPOConfig

from ce_gppo_trl.config import CEGPPOConfig
from ce_gppo_trl.losses import POLICY_LOSSES

LOSS_TYPES = tuple(POLICY_LOSSES)

UPSTREAM = "TRL's code, upstream of the loss (generation, rewards, data, logging): unchanged"
OWN_PATH = "this library's loss path (`ce_gppo`, or any loss type with `clip_ratio_c` / ERC / `positive_nll_coef`)"

# field -> (probe kwargs: a non-default value and what it needs, note). Fields absent here are UPSTREAM, probed with
# no kwargs (their default).
FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "loss_type": ({}, "default `ce_gppo`; every TRL loss type keeps TRL's meaning and TRL's `_compute_loss`"),
    "beta": ({"beta": 0.04}, "KL to the reference, TRL's k3 form, added after ERC (ERC does not mask it)"),
    "use_bias_correction_kl": (
        {"beta": 0.04, "use_bias_correction_kl": False},
        "as TRL; at sequence level the KL weight is the sequence ratio, as TRL's",
    ),
    "num_iterations": ({"num_iterations": 2}, "as TRL; makes updates off-policy (see `CEGPPOConfig.off_policy`)"),
    "steps_per_generation": ({"steps_per_generation": 8}, "as TRL; > gradient_accumulation_steps: off-policy"),
    "epsilon": ({"epsilon": 0.1}, "the clip band's lower half-width (NA&LP edge for `ce_gppo`)"),
    "epsilon_high": (
        {"epsilon_high": 0.28},
        "upper half-width (PA&LP edge for `ce_gppo`); CISPO's absolute ratio cap, as TRL",
    ),
    "delta": (
        {"delta": 4.0},
        "TRL's two-sided clip; `ce_gppo`: TRL's `min(min(r, delta) A, clip(r) A)` outside NA&LP / PA&LP, which keep "
        "Eq. 8 (with `delta > 1 + epsilon_high`: the dual clip at `delta`); must be > 1 with `ce_gppo`",
    ),
    "importance_sampling_level": (
        {"importance_sampling_level": "sequence"},
        "GSPO; `ce_gppo`: Eq. 8 with the sequence ratio `s_i` in place of `r` (GSPO-token form, per-token masks act "
        "on each token's own term); clip metrics per sequence, as TRL's; per-token clip bounds need 'token'",
    ),
    "sapo_temperature_neg": ({"sapo_temperature_neg": 2.0}, "`sapo` only, as TRL"),
    "sapo_temperature_pos": ({"sapo_temperature_pos": 2.0}, "`sapo` only, as TRL"),
    "vespo_k_pos": ({"vespo_k_pos": 1.0}, "`vespo` only, as TRL"),
    "vespo_lambda_pos": ({"vespo_lambda_pos": 1.0}, "`vespo` only, as TRL"),
    "vespo_k_neg": ({"vespo_k_neg": 1.0}, "`vespo` only, as TRL"),
    "vespo_lambda_neg": ({"vespo_lambda_neg": 1.0}, "`vespo` only, as TRL"),
    "mask_truncated_completions": ({"mask_truncated_completions": True}, "as TRL (masks the completion)"),
    "top_entropy_quantile": (
        {"top_entropy_quantile": 0.5},
        "TRL's high-entropy token mask, on the policy term and the entropy bonus",
    ),
    "entropy_coef": (
        {"entropy_coef": 0.01},
        "TRL's entropy bonus, computed as TRL 1.16 does on " + OWN_PATH + "; refused with "
        "`entropy_controller_actuator='entropy'` (two entropy terms)",
    ),
    "use_adaptive_entropy": (
        {"use_adaptive_entropy": True},
        "Skywork-OR1's adaptive bonus: TRL's update, gate and checkpoint state (`entropy_ctrl_state.json`) on both "
        "paths; refused with `entropy_controller_actuator='entropy'`",
    ),
    "entropy_coef_min": ({"use_adaptive_entropy": True, "entropy_coef_min": 0.001}, "adaptive bonus, as TRL"),
    "entropy_coef_max": ({"use_adaptive_entropy": True, "entropy_coef_max": 0.5}, "adaptive bonus, as TRL"),
    "entropy_coef_delta": ({"use_adaptive_entropy": True, "entropy_coef_delta": 0.01}, "adaptive bonus, as TRL"),
    "entropy_target": (
        {"use_adaptive_entropy": True, "entropy_target": 0.5},
        "adaptive bonus, as TRL (not `entropy_controller_target`)",
    ),
    "off_policy_mask_threshold": ({"off_policy_mask_threshold": 0.5}, "TRL's sequence mask, before ERC"),
    "use_vllm": ({"use_vllm": True}, "generation; the loss is multiplied by TRL's IS ratio, as TRL"),
    "vllm_importance_sampling_correction": (
        {"use_vllm": True, "vllm_importance_sampling_correction": False},
        "as TRL; it does not make updates off-policy",
    ),
    "vllm_importance_sampling_mode": ({"use_vllm": True, "vllm_importance_sampling_mode": "token_truncate"}, "as TRL"),
    "vllm_importance_sampling_clip_max": ({"use_vllm": True, "vllm_importance_sampling_clip_max": 2.0}, "as TRL"),
    "vllm_importance_sampling_clip_min": ({"use_vllm": True, "vllm_importance_sampling_clip_min": 0.5}, "as TRL"),
    "vllm_importance_sampling_cap": ({"use_vllm": True, "vllm_importance_sampling_cap": 2.0}, "as TRL"),
    "router_aux_loss_coef": ({"router_aux_loss_coef": 0.01}, "MoE router loss, added as TRL"),
    "disable_dropout": (
        {"disable_dropout": True},
        "also zeroes float attention dropout; ERC on a model with dropout needs it",
    ),
    "sync_ref_model": ({"sync_ref_model": True}, "TRL's reference sync callback"),
    "reward_weights": ({"reward_weights": [1.0]}, "as TRL (the NLL term and dynamic sampling read the weighted sum)"),
}

# Combinations this library refuses, each naming both fields: two mechanisms that would act on the same thing, or a
# per-token setting that a sequence-level ratio cannot carry.
REFUSED: list[tuple[dict[str, Any], tuple[str, str], str]] = [
    (
        {"entropy_controller": True, "entropy_controller_target": 0.5, "entropy_controller_actuator": "entropy"}
        | {"entropy_coef": 0.01},
        ("entropy_controller_actuator", "entropy_coef"),
        "the controller's entropy term and TRL's entropy bonus would both act on the entropy",
    ),
    (
        {"prob_clip_schedule": "increase_decrease", "max_steps": 10, "importance_sampling_level": "sequence"},
        ("importance_sampling_level", "prob_clip_schedule"),
        "probability-dependent clip bounds are per token; a sequence ratio has one bound per sequence",
    ),
    (
        {"loss_type": "dapo", "importance_sampling_level": "sequence", "erc_low": 0.95, "erc_high": 1.05},
        ("importance_sampling_level", "erc_low"),
        "ERC at sequence level needs `ce_gppo`, whose sequence ratio each token carries; a (B, 1) loss would let ERC "
        "scale whole sequences",
    ),
    (
        {"prob_clip_schedule": "increase_decrease", "max_steps": 10, "prob_clip_weight_high": 0.5},
        ("prob_clip_weight_high", "prob_clip_schedule"),
        "the schedule sets the H(p) / M(p) weights itself",
    ),
    (
        {"loss_type": "sapo", "clip_ratio_c": 10.0},
        ("clip_ratio_c", "loss_type"),
        "the dual clip applies to the PPO-clipped loss types only",
    ),
]


def grpo_fields() -> list[str]:
    """`GRPOConfig`'s own fields (those it adds to `TrainingArguments`), in declaration order."""
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    return [f.name for f in dataclasses.fields(GRPOConfig) if f.name not in base]


def build(**kwargs: Any) -> CEGPPOConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CEGPPOConfig(output_dir="compat-probe", use_cpu=True, report_to="none", **kwargs)


def cell(loss_type: str, probe: dict[str, Any]) -> str:
    """`yes` if `CEGPPOConfig(loss_type=loss_type, **probe)` is accepted, else `refused: <field>`."""
    kwargs = {"loss_type": loss_type, **probe}
    if loss_type == "cispo" and "epsilon_high" not in kwargs:
        kwargs["epsilon_high"] = 5.0  # CISPO's ratio cap (TRL's epsilon_high default of 0.2 would be a cap below 1)
    try:
        build(**kwargs)
    except ValueError as error:
        return f"refused: `{str(error).split('=')[0]}`"
    return "yes"


def render() -> str:
    """The docs page: every `GRPOConfig` field x loss type, then the refused combinations."""
    lines = [
        "# TRL 1.16 options with each loss type",
        "",
        "Generated by `python docs/compat.py` (checked by `tests/test_compat.py`): each cell builds",
        "`CEGPPOConfig(loss_type=<column>, <field>=<probe>)` with a non-default value of the field. `yes`: accepted",
        "and acting with TRL's meaning. With a TRL loss type and none of `clip_ratio_c`, ERC or `positive_nll_coef`,",
        "TRL's own `_compute_loss` runs; otherwise " + OWN_PATH.split(" (")[0] + ", which matches TRL's loss and",
        "gradients for every loss type (`tests/test_trainer.py`, `tests/test_trl_options.py`); `tests/test_dropin.py`",
        "trains `CEGPPOTrainer` in place of `GRPOTrainer` over a matrix of these options.",
        "",
        "| field | probe | " + " | ".join(f"`{name}`" for name in LOSS_TYPES) + " | how it acts |",
        "|---|---|" + "---|" * len(LOSS_TYPES) + "---|",
    ]
    default_cells = " | ".join(cell(loss_type, {}) for loss_type in LOSS_TYPES)
    for name in grpo_fields():
        probe, note = FIELDS.get(name, ({}, UPSTREAM))
        shown = ", ".join(f"`{key}={value!r}`" for key, value in probe.items()) or "default"
        cells = " | ".join(cell(loss_type, probe) for loss_type in LOSS_TYPES) if probe else default_cells
        lines.append(f"| `{name}` | {shown} | {cells} | {note} |")
    lines += [
        "",
        "## Refused combinations",
        "",
        "Two mechanisms that would act on the same thing, or a per-token setting without a per-token ratio; the",
        "error names the fields.",
        "",
        "| settings | why |",
        "|---|---|",
    ]
    for probe, _, why in REFUSED:
        shown = ", ".join(f"`{key}={value!r}`" for key, value in probe.items())
        lines.append(f"| {shown} | {why} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
