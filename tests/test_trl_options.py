"""Issue 25: TRL's options on this library's loss path, checked against TRL 1.16's own `_compute_loss`.

TRL's entropy bonus (static and adaptive), GSPO's sequence level and `delta` with CE-GPPO, on one off-policy
micro-batch of a tiny random model whose old log-probs are perturbed away from pi_theta (`scoring_trainer`).
"""

import pytest
import torch
from test_trainer import digit_reward, loss_and_grads, score, scoring_trainer, tiny_args  # noqa: F401 (fixture)
from trl import GRPOTrainer

from ce_gppo_trl import CEGPPOTrainer
from ce_gppo_trl.callbacks import EntropyControllerCallback
from ce_gppo_trl.losses import entropy_ratio_mask, sequence_log_ratio

ACCUMULATION = 2  # the bonus and the policy term are divided by it: a wrong normaliser shows


def set_options(trainer, monkeypatch, loss_type, **options):
    """Patch a built trainer to another loss type and TRL options, where TRL reads each one."""
    monkeypatch.setattr(trainer, "loss_type", loss_type)
    monkeypatch.setattr(trainer.args, "erc_low", None)
    monkeypatch.setattr(trainer.args, "erc_high", None)
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", ACCUMULATION)
    options = {"entropy_coef": 0.0, "use_adaptive_entropy": False, **options}
    for name, value in options.items():
        if hasattr(trainer, name):
            monkeypatch.setattr(trainer, name, value)
        monkeypatch.setattr(trainer.args, name, value)
    bonus = trainer.entropy_coef != 0.0 or trainer.use_adaptive_entropy
    monkeypatch.setattr(trainer, "_entropy_bonus_enabled", bonus)


def run_with_bonus_state(trainer, monkeypatch, compute, inputs, coef=0.05):
    """Loss, gradients, the adaptive state after the call and the bonus metrics, from one fresh bonus state."""
    for name, value in (("entropy_coef", coef), ("_last_world_entropy", 0.5), ("_entropy_window_stats", None)):
        monkeypatch.setattr(trainer, name, value)
    trainer._metrics["train"].clear()
    loss, grads = loss_and_grads(trainer, compute, inputs)
    metrics = {key: trainer._metrics["train"][key][-1] for key in ("policy_loss", "entropy_coef")}
    return loss, grads, (trainer.entropy_coef, trainer._last_world_entropy), metrics


@pytest.mark.parametrize(
    ("loss_type", "options"),
    [
        ("dapo", {"entropy_coef": 0.05}),
        ("grpo", {"use_adaptive_entropy": True}),
        ("bnpo", {"use_adaptive_entropy": True, "top_entropy_quantile": 0.5}),
        ("luspo", {"entropy_coef": 0.05, "importance_sampling_level": "sequence"}),
        ("cispo", {"use_adaptive_entropy": True, "epsilon_high": 1.2}),
        ("dr_grpo", {"entropy_coef": 0.05, "beta": 0.04}),
        ("sapo", {"use_adaptive_entropy": True}),
        ("vespo", {"entropy_coef": 0.05}),
    ],
)
def test_entropy_bonus_on_own_path_is_trls(scoring_trainer, monkeypatch, loss_type, options):  # noqa: F811
    trainer, inputs = scoring_trainer
    monkeypatch.setattr(trainer.args, "entropy_target", 10.0)  # the adaptive gate is open (0.5 <= 10) and raises
    monkeypatch.setattr(trainer.args, "entropy_coef_delta", 0.01)
    set_options(trainer, monkeypatch, loss_type, **options)
    trl_loss, trl_grads, trl_state, trl_metrics = run_with_bonus_state(
        trainer, monkeypatch, lambda m, x: GRPOTrainer._compute_loss(trainer, m, x), inputs
    )
    own_loss, own_grads, own_state, own_metrics = run_with_bonus_state(
        trainer, monkeypatch, trainer._compute_policy_loss, inputs
    )
    torch.testing.assert_close(own_loss, trl_loss, rtol=1e-5, atol=1e-7)
    for own, ref in zip(own_grads, trl_grads, strict=True):
        torch.testing.assert_close(own, ref, rtol=1e-4, atol=1e-7)
    assert own_state == pytest.approx(trl_state, rel=1e-6)
    assert own_metrics == pytest.approx(trl_metrics, rel=1e-5)
    if trainer.use_adaptive_entropy:
        assert own_state[0] == pytest.approx(0.06)  # stepped up by entropy_coef_delta: entropy 1.x <= target 10


def test_entropy_bonus_with_ce_gppo_is_trls_term(scoring_trainer, monkeypatch):  # noqa: F811
    """CE-GPPO + Skywork's adaptive entropy: the loss moves by exactly coef x mean H / accumulation."""
    trainer, inputs = scoring_trainer
    monkeypatch.setattr(trainer.args, "entropy_target", 10.0)
    set_options(trainer, monkeypatch, "ce_gppo")
    plain = trainer._compute_policy_loss(trainer.model, inputs).detach()
    set_options(trainer, monkeypatch, "ce_gppo", use_adaptive_entropy=True, entropy_coef_delta=0.01)
    loss, _, state, metrics = run_with_bonus_state(
        trainer, monkeypatch, trainer._compute_policy_loss, inputs, coef=0.2
    )
    _, entropies = score(trainer, inputs)
    mask = inputs["completion_mask"]
    mean_entropy = ((entropies * mask).sum() / mask.sum()).item()
    assert (plain - loss).item() == pytest.approx(0.2 * mean_entropy / ACCUMULATION, rel=1e-4)
    assert state == pytest.approx((0.21, mean_entropy), rel=1e-5)
    assert metrics["policy_loss"] == pytest.approx(plain.item(), rel=1e-5)


def sequence_setup(trainer, inputs, monkeypatch, loss_type, **options):
    """Sequence-level options, and inputs whose old log-probs are shifted per sequence so that the sequence ratios
    spread over about exp(+-0.4): some sequences leave the band (0.8, 1.2), some stay inside."""
    set_options(trainer, monkeypatch, loss_type, importance_sampling_level="sequence", **options)
    old_logps = inputs["old_per_token_logps"]
    shift = 0.4 * torch.randn((old_logps.size(0), 1), generator=torch.Generator().manual_seed(1))
    inputs = {**inputs, "old_per_token_logps": old_logps + shift}
    logps, entropies = score(trainer, inputs)
    mask = inputs["completion_mask"]
    seq_ratio = sequence_log_ratio(logps - inputs["old_per_token_logps"], mask).exp().squeeze(1)
    return inputs, seq_ratio, entropies, mask


def test_sequence_level_ce_gppo_with_zero_betas_has_trl_gspo_dapo_gradients(scoring_trainer, monkeypatch):  # noqa: F811
    trainer, inputs = scoring_trainer
    inputs, seq_ratio, _, mask = sequence_setup(trainer, inputs, monkeypatch, "dapo")
    advantages = inputs["advantages"]
    clipped = ((seq_ratio > 1.2) & (advantages > 0)) | ((seq_ratio < 0.8) & (advantages < 0))
    assert 0 < clipped.sum() < len(clipped)  # some sequences are outside the band, some inside
    trainer._metrics["train"].clear()
    _, trl_grads = loss_and_grads(trainer, lambda m, x: GRPOTrainer._compute_loss(trainer, m, x), inputs)
    trl_clip = {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("clip_ratio/")}
    monkeypatch.setattr(trainer, "loss_type", "ce_gppo")
    monkeypatch.setattr(trainer, "ce_gppo_beta1", 0.0)
    monkeypatch.setattr(trainer, "ce_gppo_beta2", 0.0)
    trainer._metrics["train"].clear()
    _, own_grads = loss_and_grads(trainer, trainer._compute_policy_loss, inputs)
    for own, ref in zip(own_grads, trl_grads, strict=True):
        torch.testing.assert_close(own, ref, rtol=1e-4, atol=1e-7)
    # The clip metrics are per sequence, as TRL's at sequence level
    for key, value in trl_clip.items():
        assert trainer._metrics["train"][key][-1] == pytest.approx(value, abs=1e-6), key
    assert trainer._metrics["train"]["clip_ratio/region_mean"][-1] == pytest.approx(clipped.float().mean().item())
    # With beta = 1 (GPPO) the out-of-band sequences keep a gradient: the update differs
    monkeypatch.setattr(trainer, "ce_gppo_beta1", 1.0)
    monkeypatch.setattr(trainer, "ce_gppo_beta2", 1.0)
    _, gppo_grads = loss_and_grads(trainer, trainer._compute_policy_loss, inputs)
    assert not torch.allclose(
        torch.cat([g.flatten() for g in gppo_grads]), torch.cat([g.flatten() for g in own_grads])
    )


def test_sequence_level_erc_removes_each_masked_tokens_own_term(scoring_trainer, monkeypatch):  # noqa: F811
    """The gradient is sum_t -F_i A_i keep_t grad log pi(y_t) / N (Eq. 8 with s_i, `gspo_token_log_ratio`): a
    masked token loses its own term only. A (B, 1) loss broadcast over the tokens would instead scale the whole
    sequence's gradient by its kept share."""
    trainer, inputs = scoring_trainer
    inputs, seq_ratio, entropies, mask = sequence_setup(
        trainer, inputs, monkeypatch, "ce_gppo", erc_low=0.95, erc_high=1.05
    )
    keep = entropy_ratio_mask(entropies, inputs["old_entropies"], 0.95, 1.05)
    assert 0.2 < keep[mask.bool()].float().mean() < 0.9
    erc_loss, erc_grads = loss_and_grads(trainer, trainer._compute_policy_loss, inputs)
    advantages = inputs["advantages"]
    factor = torch.where(
        (seq_ratio < 0.8) & (advantages < 0),
        trainer.ce_gppo_beta1 * 0.8,
        torch.where((seq_ratio > 1.2) & (advantages > 0), trainer.ce_gppo_beta2 * 1.2, seq_ratio),
    )
    num_items = inputs["num_items_in_batch"] * ACCUMULATION / trainer.args.steps_per_generation
    weight = -(factor * advantages).unsqueeze(1) * keep * mask / num_items

    def surrogate(model, x):
        ids = torch.cat([x["prompt_ids"], x["completion_ids"]], 1)
        attention = torch.cat([x["prompt_mask"], x["completion_mask"]], 1)
        logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, attention, x["completion_ids"].size(1))
        return (weight * logps).sum()

    _, ref_grads = loss_and_grads(trainer, surrogate, inputs)
    for erc, ref in zip(erc_grads, ref_grads, strict=True):
        torch.testing.assert_close(erc, ref, rtol=1e-4, atol=1e-7)
    unmasked = {**inputs, "old_entropies": entropies}
    torch.testing.assert_close(erc_loss, trainer._compute_policy_loss(trainer.model, unmasked).detach())


def test_sequence_level_diagnostics_count_the_tokens_of_clipped_sequences(scoring_trainer, monkeypatch):  # noqa: F811
    trainer, inputs = scoring_trainer
    inputs, seq_ratio, _, mask = sequence_setup(trainer, inputs, monkeypatch, "ce_gppo", entropy_diagnostics=True)
    advantages = inputs["advantages"]
    high = ((seq_ratio > 1.2) & (advantages > 0)).float()
    low = ((seq_ratio < 0.8) & (advantages < 0)).float()
    trainer._metrics["train"].clear()
    loss_and_grads(trainer, trainer._compute_policy_loss, inputs)
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    lengths = mask.sum(-1)
    assert metrics["entropy_dynamics/clip_high_token_frac"] == pytest.approx(
        ((high * lengths).sum() / lengths.sum()).item()
    )
    assert metrics["entropy_dynamics/clip_low_token_frac"] == pytest.approx(
        ((low * lengths).sum() / lengths.sum()).item()
    )
    assert metrics["clip_ratio/high_mean"] == pytest.approx(high.mean().item())
    quadrants = sum(metrics[f"entropy_dynamics/E{i}_predicted_delta"] for i in range(1, 5))
    assert quadrants == pytest.approx(metrics["entropy_dynamics/predicted_delta"], rel=1e-4, abs=1e-9)


def test_delta_with_ce_gppo_and_zero_betas_has_trl_dapo_delta_gradients(scoring_trainer, monkeypatch):  # noqa: F811
    trainer, inputs = scoring_trainer
    set_options(trainer, monkeypatch, "dapo", delta=1.1)  # below 1 + eps: the cap acts on positive advantages
    _, trl_grads = loss_and_grads(trainer, lambda m, x: GRPOTrainer._compute_loss(trainer, m, x), inputs)
    set_options(trainer, monkeypatch, "ce_gppo", delta=1.1, ce_gppo_beta1=0.0, ce_gppo_beta2=0.0)
    _, own_grads = loss_and_grads(trainer, trainer._compute_policy_loss, inputs)
    for own, ref in zip(own_grads, trl_grads, strict=True):
        torch.testing.assert_close(own, ref, rtol=1e-4, atol=1e-7)
    monkeypatch.setattr(trainer.args, "delta", None)
    _, uncapped = loss_and_grads(trainer, trainer._compute_policy_loss, inputs)
    assert not torch.allclose(torch.cat([g.flatten() for g in uncapped]), torch.cat([g.flatten() for g in own_grads]))


def test_python_entropy_controller_with_trl_bonus_is_refused_naming_both(tiny_model_dir, arithmetic_dataset, tmp_path):
    args = tiny_args(tmp_path, entropy_coef=0.01)
    with pytest.raises(
        ValueError, match=r"entropy_controller_actuator='entropy' .* \(entropy_coef=0.01, use_adaptive"
    ):
        CEGPPOTrainer(
            model=tiny_model_dir,
            reward_funcs=digit_reward,
            args=args,
            train_dataset=arithmetic_dataset,
            callbacks=[EntropyControllerCallback(0.5, actuator="entropy")],
        )
