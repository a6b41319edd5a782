"""CEGPPOConfig validation: every bad value names the field, the value and what is allowed."""

import math
import warnings

import pytest

from ce_gppo_trl import CEGPPOConfig


def make(**kwargs):
    return CEGPPOConfig(output_dir="unused", use_cpu=True, report_to="none", **kwargs)


def test_defaults_are_the_paper_setting():
    config = make()
    assert config.loss_type == "ce_gppo"
    assert (config.ce_gppo_beta1, config.ce_gppo_beta2, config.epsilon) == (0.5, 1.0, 0.2)
    assert config.clip_ratio_c is None and not config.erc_enabled
    assert config.uses_own_loss


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "ppo"}, r"loss_type='ppo' is not allowed: expected one of \['bnpo', 'ce_gppo'"),
        ({"epsilon": math.nan}, "epsilon=nan is not allowed: expected a finite number"),
        ({"epsilon": -0.1}, r"epsilon=-0.1 is not allowed: expected 0.0 <= epsilon < 1.0"),
        ({"epsilon": 1.0}, r"epsilon=1.0 is not allowed: expected 0.0 <= epsilon < 1.0"),
        ({"epsilon_high": 1.5}, r"epsilon_high=1.5 is not allowed: expected 0.0 <= epsilon_high < 1.0"),
        ({"epsilon_high": math.inf}, "epsilon_high=inf is not allowed: expected a finite number"),
        ({"ce_gppo_beta1": -0.5}, "ce_gppo_beta1=-0.5 is not allowed: expected a finite number >= 0"),
        ({"ce_gppo_beta2": math.nan}, "ce_gppo_beta2=nan is not allowed: expected a finite number"),
        ({"clip_ratio_c": 1.0}, "clip_ratio_c=1.0 is not allowed: expected a number > 1"),
        ({"clip_ratio_c": math.nan}, "clip_ratio_c=nan is not allowed: expected a finite number"),
        ({"loss_type": "sapo", "clip_ratio_c": 10.0}, "clip_ratio_c=10.0 is not allowed: the dual clip applies"),
        ({"erc_low": 0.95}, r"erc_low/erc_high=\(0.95, None\) is not allowed: set both bounds"),
        ({"erc_low": 1.0, "erc_high": 1.05}, "erc_low=1.0 is not allowed: expected 0 <= erc_low < 1"),
        ({"erc_low": 0.95, "erc_high": 1.0}, "erc_high=1.0 is not allowed: expected erc_high > 1"),
        ({"erc_low": math.nan, "erc_high": 1.05}, "erc_low=nan is not allowed: expected a finite number"),
        (
            {"loss_type": "dapo", "importance_sampling_level": "sequence", "erc_low": 0.95, "erc_high": 1.05},
            "importance_sampling_level='sequence' is not allowed: ERC .* needs loss_type='ce_gppo'.* loss_type='dapo'",
        ),
        ({"delta": 1.0}, r"delta=1.0 is not allowed: with loss_type='ce_gppo' the ratio cap must be > 1"),
        ({"delta": math.inf}, "delta=inf is not allowed: expected a finite number"),
        (
            {"entropy_controller": True, "entropy_controller_target": 0.5, "entropy_controller_actuator": "entropy"}
            | {"use_adaptive_entropy": True},
            r"entropy_controller_actuator='entropy' is not allowed: .* \(entropy_coef=0.0, "
            r"use_adaptive_entropy=True\)",
        ),
        ({"clip_cov_ratio": 0.0}, "clip_cov_ratio=0.0 is not allowed: expected a share of the loss tokens"),
        ({"kl_cov_ratio": 1.5}, "kl_cov_ratio=1.5 is not allowed: expected a share of the loss tokens"),
        ({"kl_cov_ratio": math.nan}, "kl_cov_ratio=nan is not allowed: expected a finite number"),
        ({"clip_cov_lb": 5.0}, "clip_cov_lb=5.0 is not allowed: expected clip_cov_lb < clip_cov_ub = 5.0"),
        ({"ppo_kl_coef": -1.0}, "ppo_kl_coef=-1.0 is not allowed: expected a finite number >= 0"),
        (
            {"loss_type": "kl_cov", "importance_sampling_level": "sequence"},
            "importance_sampling_level='sequence' is not allowed: loss_type='kl_cov' selects tokens",
        ),
        ({"loss_type": "clip_cov", "delta": 4.0}, "delta=4.0 is not allowed: the two-sided clip is TRL's"),
        ({"loss_type": "kl_cov", "clip_ratio_c": 10.0}, "clip_ratio_c=10.0 is not allowed: the dual clip applies"),
        ({"vllm_logp_difference_bound": 0.0}, "vllm_logp_difference_bound=0.0 is not allowed: expected a number > 0"),
        ({"vllm_logp_difference_bound": math.inf}, "vllm_logp_difference_bound=inf is not allowed: expected a finite"),
        ({"vllm_lora_sync": "merged"}, "vllm_lora_sync='merged' is not allowed: expected one of adapter, merge"),
        (
            {"use_liger_kernel": True, "liger_kernel_config": {"fused_linear_cross_entropy": True}},
            r"liger_kernel_config=\{'fused_linear_cross_entropy': True\} is not allowed: GRPO computes log-probs",
        ),
    ],
)
def test_bad_values_raise_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_clip_cov_and_kl_cov_take_verls_defaults_on_this_librarys_loss_path():
    for loss_type in ("clip_cov", "kl_cov"):
        config = make(loss_type=loss_type, steps_per_generation=4)
        assert config.uses_own_loss
        assert (config.clip_cov_ratio, config.clip_cov_lb, config.clip_cov_ub) == (2e-4, 1.0, 5.0)
        assert (config.kl_cov_ratio, config.ppo_kl_coef) == (2e-4, 1.0)
    with pytest.warns(UserWarning, match=r"loss_type='kl_cov' \(its \|log r\| penalty\) cannot act"):
        make(loss_type="kl_cov")


def test_trl_loss_types_keep_their_meaning():
    # TRL options stay available where this library's loss path is not involved
    config = make(loss_type="dapo", entropy_coef=0.01, importance_sampling_level="sequence", delta=4.0)
    assert not config.uses_own_loss
    # CISPO reuses epsilon_high as an absolute ratio cap (ScaleRL recommends 5.0)
    assert make(loss_type="cispo", epsilon_high=5.0).epsilon_high == 5.0
    # ERC switches any loss type onto this library's path
    assert make(loss_type="sapo", erc_low=0.95, erc_high=1.05).uses_own_loss


@pytest.mark.parametrize(
    "kwargs",
    [
        {"entropy_coef": 0.01},
        {"use_adaptive_entropy": True, "gradient_accumulation_steps": 2},
        {"loss_type": "dapo", "positive_nll_coef": 0.1, "use_adaptive_entropy": True},
        {"importance_sampling_level": "sequence", "erc_low": 0.95, "erc_high": 1.05, "clip_ratio_c": 10.0},
        {"delta": 4.0, "clip_ratio_c": 3.0},
        {
            "entropy_controller": True,
            "entropy_controller_target": 0.5,
            "entropy_controller_actuator": "betas",
            "entropy_coef": 0.01,
        },
    ],
)
def test_trl_options_compose_with_this_librarys_loss_path(kwargs):
    """Issue 25: TRL's entropy bonus, GSPO's sequence level and delta are accepted with loss_type='ce_gppo'."""
    assert make(**kwargs).uses_own_loss


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "sapo", "cispo"])
def test_sequence_level_erc_is_refused_off_ce_gppo_and_token_level_erc_is_not(loss_type):
    # Issue 33: on a (B, 1) sequence loss a masked token would scale its whole sequence's gradient.
    erc = {"erc_low": 0.95, "erc_high": 1.05, "loss_type": loss_type}
    with pytest.raises(ValueError, match="importance_sampling_level='sequence' is not allowed: ERC"):
        make(importance_sampling_level="sequence", **erc)
    assert make(**erc).erc_enabled


@pytest.mark.parametrize(
    ("kwargs", "off_policy"),
    [
        ({}, False),  # steps_per_generation defaults to gradient_accumulation_steps: on-policy
        ({"steps_per_generation": 8}, True),
        ({"gradient_accumulation_steps": 2, "steps_per_generation": 16}, True),
        ({"gradient_accumulation_steps": 4, "steps_per_generation": 4}, False),
        ({"num_iterations": 2}, True),
        # Every iteration inside one accumulation window: no optimizer step between scoring and training
        ({"gradient_accumulation_steps": 8, "steps_per_generation": 2, "num_iterations": 2}, False),
        ({"gradient_accumulation_steps": 3, "steps_per_generation": 2}, True),  # some steps fall mid-rollout
        # vLLM's importance-sampling correction makes TRL score old_per_token_logps, with the weights being trained
        ({"use_vllm": True, "vllm_importance_sampling_correction": True}, False),
        ({"use_vllm": True, "steps_per_generation": 8}, True),
    ],
)
def test_off_policy_detection(kwargs, off_policy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert make(**kwargs).off_policy is off_policy


def test_on_policy_config_warns_when_built_naming_the_fields_and_the_fix():
    with pytest.warns(UserWarning, match="cannot act in this run") as record:
        make(use_vllm=True, erc_low=0.95, erc_high=1.05, gradient_accumulation_steps=4)
    (message,) = [str(w.message) for w in record if "cannot act" in str(w.message)]
    assert message.startswith("loss_type='ce_gppo' and ERC (erc_low/erc_high) cannot act in this run")
    for text in ("gradient_accumulation_steps=4", "steps_per_generation=4", "num_iterations=1"):
        assert text in message
    assert "set steps_per_generation to k x gradient_accumulation_steps with k > 1" in message
    # TRL loss types without this library's knobs, and off-policy configs, stay silent
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        make(loss_type="dapo")
        make(steps_per_generation=8, erc_low=0.95, erc_high=1.05, clip_ratio_c=10.0)


def test_liger_layer_kernels_are_allowed_as_in_trl():
    config = make(use_liger_kernel=True, steps_per_generation=8)
    assert config.use_liger_kernel and not (config.liger_kernel_config or {}).get("fused_linear_cross_entropy")


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_entropy_attribution_steps_must_be_an_integer_at_least_zero(value):
    with pytest.raises(ValueError, match=rf"entropy_attribution_steps={value!r} is not allowed: expected an integer"):
        make(entropy_attribution_steps=value)


def test_entropy_attribution_turns_on_this_librarys_loss_path():
    assert not make(loss_type="dapo").uses_own_loss
    config = make(loss_type="dapo", entropy_attribution_steps=4)
    assert config.uses_own_loss and config.own_loss_features == ["entropy_attribution_steps"]


def test_erc_under_bf16_on_a_gpu_warns_without_float32_logits():
    config = make(steps_per_generation=8, erc_low=0.95, erc_high=1.05, bf16=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        config._validate_erc()  # CPU kernels: the same logits in any batch arrangement, no warning
    # A GPU config (not buildable on a CPU machine, where TrainingArguments refuses bf16 without use_cpu)
    config.use_cpu = False
    with pytest.warns(UserWarning, match="bf16=True and cast_lm_head_to_fp32=False.*set cast_lm_head_to_fp32=True"):
        config._validate_erc()
    config.cast_lm_head_to_fp32 = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        config._validate_erc()


@pytest.mark.parametrize(
    "old,new,value",
    [
        ("prob_clip_high_weight", "prob_clip_weight_high", 0.5),
        ("prob_clip_low_weight", "prob_clip_weight_low", 0.25),
        ("entropy_schedule", "prob_clip_schedule", "increase_decrease"),
        ("entropy_schedule_split", "prob_clip_schedule_split", 0.3),
        ("entropy_controller_knobs", "entropy_controller_actuator", "clip"),
    ],
)
def test_renamed_fields_still_accept_the_old_name_with_a_future_warning(old, new, value):
    with pytest.warns(FutureWarning, match=rf"{old} is deprecated .*: use {new}"):
        config = make(**{old: value})
    assert getattr(config, new) == value and getattr(config, old) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert getattr(make(**{new: value}), new) == value  # the new name: no warning


def test_config_and_callbacks_refuse_a_bad_value_with_one_message():
    from ce_gppo_trl.callbacks import EntropyControllerCallback, KnobScheduleCallback, ProbClipScheduleCallback

    message = "od_min_ratio=1.5 is not allowed: expected a number in the open interval (0, 1)."
    for build in (
        lambda: make(od_min_ratio=1.5),
        lambda: ProbClipScheduleCallback("oscillatory_decay", od_min_ratio=1.5),
    ):
        with pytest.raises(ValueError) as error:
            build()
        assert str(error.value) == message
    with pytest.raises(ValueError, match=r"^entropy_controller_kp=-1.0 is not allowed: expected a finite number >= 0"):
        EntropyControllerCallback(1.0, kp=-1.0)
    with pytest.raises(ValueError, match=r"^entropy_controller_kp=-1.0 is not allowed: expected a finite number >= 0"):
        make(entropy_controller_kp=-1.0)
    with pytest.raises(ValueError, match=r"^final=None is not allowed: a 'linear' schedule needs a final value"):
        KnobScheduleCallback("ce_gppo_beta1", "linear")
    with pytest.raises(ValueError, match=r"^beta1_final=None is not allowed: a 'linear' schedule needs a final value"):
        make(beta1_schedule="linear")
    with pytest.warns(FutureWarning, match=r"knobs=\.\.\.\) is deprecated: use actuator"):
        assert EntropyControllerCallback(1.0, knobs="clip").actuator == "clip"
