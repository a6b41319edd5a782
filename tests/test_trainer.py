"""CEGPPOTrainer on a tiny random model: real generation, real off-policy updates, compared with TRL."""

import logging
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from transformers import set_seed
from trl import GRPOConfig, GRPOTrainer

from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
from ce_gppo_trl.losses import entropy_ratio_mask


def digit_reward(completions, **kwargs):
    """Dense toy reward (share of digits) so that advantages vary inside every group."""
    return [sum(char.isdigit() for char in completion) / 8 for completion in completions]


def tiny_args(tmp_path, config_class=CEGPPOConfig, **overrides):
    values = {
        "output_dir": str(tmp_path),
        "use_cpu": True,
        "report_to": "none",
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "steps_per_generation": 4,  # 4 optimizer updates per rollout batch: off-policy after the first
        "max_completion_length": 8,
        "learning_rate": 2e-2,
        "max_steps": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "beta": 0.0,
        **overrides,
    }
    return config_class(**values)


def train(trainer_class, model_dir, dataset, args):
    set_seed(args.seed)
    trainer = trainer_class(model=model_dir, reward_funcs=digit_reward, args=args, train_dataset=dataset)
    trainer.train()
    return trainer


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_ce_gppo_acts_on_out_of_band_tokens(tiny_model_dir, arithmetic_dataset, tmp_path):
    gppo = train(
        CEGPPOTrainer, tiny_model_dir, arithmetic_dataset, tiny_args(tmp_path, ce_gppo_beta1=1.0, ce_gppo_beta2=1.0)
    )
    clipped = logged(gppo, "clip_ratio/region_mean")
    assert clipped[0] == 0.0  # first update of each rollout batch is on-policy
    assert max(clipped[1:]) > 0.05
    assert all(torch.isfinite(torch.tensor(logged(gppo, "loss"))))
    # Same seed and data with beta = 0 (DAPO's gradients): the out-of-band tokens make the runs differ
    dapo_like = train(
        CEGPPOTrainer, tiny_model_dir, arithmetic_dataset, tiny_args(tmp_path, ce_gppo_beta1=0.0, ce_gppo_beta2=0.0)
    )
    assert logged(dapo_like, "grad_norm")[0] == pytest.approx(logged(gppo, "grad_norm")[0], rel=1e-5)
    assert not torch.allclose(params(gppo), params(dapo_like), atol=1e-6)


def test_zero_betas_match_trl_dapo_step_for_step(tiny_model_dir, arithmetic_dataset, tmp_path):
    ours = train(
        CEGPPOTrainer,
        tiny_model_dir,
        arithmetic_dataset,
        tiny_args(tmp_path / "ours", ce_gppo_beta1=0.0, ce_gppo_beta2=0.0),
    )
    trl = train(
        GRPOTrainer, tiny_model_dir, arithmetic_dataset, tiny_args(tmp_path / "trl", GRPOConfig, loss_type="dapo")
    )
    assert max(logged(trl, "clip_ratio/region_mean")) > 0.05  # clipping really happened
    for key in ("grad_norm", "reward", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean"):
        torch.testing.assert_close(
            torch.tensor(logged(ours, key)), torch.tensor(logged(trl, key)), rtol=1e-4, atol=1e-6, msg=key
        )
    torch.testing.assert_close(params(ours), params(trl), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def scoring_trainer(tiny_model_dir, arithmetic_dataset, tmp_path_factory):
    """A trainer and one off-policy micro-batch whose old log-probs and entropies are perturbed away from pi_theta."""
    args = tiny_args(tmp_path_factory.mktemp("scoring"), loss_type="dapo", erc_low=0.95, erc_high=1.05)
    set_seed(0)
    trainer = CEGPPOTrainer(
        model=tiny_model_dir, reward_funcs=digit_reward, args=args, train_dataset=arithmetic_dataset
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    generator = torch.Generator().manual_seed(0)
    logps = inputs["old_per_token_logps"]
    inputs["old_per_token_logps"] = logps + 0.3 * torch.randn(logps.shape, generator=generator)
    inputs["ref_per_token_logps"] = logps + 0.1 * torch.randn(logps.shape, generator=generator)
    entropies = inputs["old_entropies"]
    inputs["old_entropies"] = entropies * (1 + 0.1 * torch.randn(entropies.shape, generator=generator))
    return trainer, inputs


def loss_and_grads(trainer, compute, inputs):
    trainer.model.zero_grad()
    loss = compute(trainer.model, inputs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize(
    ("loss_type", "extra"),
    [
        ("grpo", {}),
        ("bnpo", {}),
        ("dr_grpo", {}),
        ("dapo", {}),
        ("luspo", {"importance_sampling_level": "sequence"}),
        ("cispo", {"epsilon_high": 1.2}),
        ("sapo", {}),
        ("vespo", {}),
        ("grpo", {"importance_sampling_level": "sequence"}),
        ("dapo", {"beta": 0.04, "use_bias_correction_kl": True}),
        ("dapo", {"delta": 1.1}),
        ("dapo", {"top_entropy_quantile": 0.5, "off_policy_mask_threshold": 0.01}),
    ],
)
def test_own_loss_path_matches_trl_for_every_loss_type(scoring_trainer, monkeypatch, loss_type, extra):
    trainer, inputs = scoring_trainer
    monkeypatch.setattr(trainer, "loss_type", loss_type)
    monkeypatch.setattr(trainer.args, "erc_low", None)
    for name, value in extra.items():
        target = trainer if hasattr(trainer, name) and name != "use_bias_correction_kl" else trainer.args
        monkeypatch.setattr(target, name, value)
        if name == "epsilon_high":
            monkeypatch.setattr(trainer.args, name, value)
        if name == "delta":
            monkeypatch.setattr(trainer.args, name, value)
    trainer._metrics["train"].clear()
    trl_loss, trl_grads = loss_and_grads(trainer, lambda m, x: GRPOTrainer._compute_loss(trainer, m, x), inputs)
    trl_metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    trainer._metrics["train"].clear()
    own_loss, own_grads = loss_and_grads(trainer, trainer._compute_policy_loss, inputs)
    torch.testing.assert_close(own_loss, trl_loss, rtol=1e-5, atol=1e-7)
    for own, ref in zip(own_grads, trl_grads, strict=True):
        torch.testing.assert_close(own, ref, rtol=1e-4, atol=1e-7)
    # Same clip metrics as TRL's, on the same ratio (with delta: after TRL's two-sided cap)
    clip_keys = [key for key in trl_metrics if key.startswith(("clip_ratio/", "cispo_clip_ratio"))]
    assert bool(clip_keys) == (loss_type not in ("sapo", "vespo"))
    for key in clip_keys:
        assert trainer._metrics["train"][key][-1] == pytest.approx(trl_metrics[key], abs=1e-6), key


def score(trainer, inputs):
    """Log-probs and entropies of the completions under the trainer's current model, without gradient."""
    with torch.no_grad():
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            inputs["completion_ids"].size(1),
            compute_entropy=True,
        )
    return logps, entropies


@pytest.mark.parametrize("loss_type", ["ce_gppo", "dapo"])
def test_erc_zeroes_gradients_outside_the_band_only(scoring_trainer, monkeypatch, loss_type):
    trainer, inputs = scoring_trainer
    monkeypatch.setattr(trainer, "loss_type", loss_type)
    _, entropies = score(trainer, inputs)
    keep = entropy_ratio_mask(entropies, inputs["old_entropies"], 0.95, 1.05)
    active = inputs["completion_mask"].bool()
    assert 0.2 < keep[active].float().mean() < 0.9
    erc_loss, erc_grads = loss_and_grads(trainer, trainer._compute_policy_loss, inputs)
    masked_low = trainer._metrics["train"]["entropy_ratio/clip_low_mean"][-1]
    masked_high = trainer._metrics["train"]["entropy_ratio/clip_high_mean"][-1]
    assert masked_low + masked_high == pytest.approx(1 - keep[active].float().mean().item(), abs=1e-6)
    # Reference: ERC off, masked tokens given zero advantage (no gradient) but kept in the token count
    reference = {**inputs, "advantages": inputs["advantages"].unsqueeze(1) * keep, "old_entropies": entropies}
    _, ref_grads = loss_and_grads(trainer, trainer._compute_policy_loss, reference)
    for erc, ref in zip(erc_grads, ref_grads, strict=True):
        torch.testing.assert_close(erc, ref, rtol=1e-4, atol=1e-7)
    # ERC keeps the loss value of the masked tokens
    unmasked = {**inputs, "old_entropies": entropies}
    torch.testing.assert_close(erc_loss, trainer._compute_policy_loss(trainer.model, unmasked).detach())


def test_old_entropies_come_from_the_old_logps_pass(tiny_model_dir, arithmetic_dataset, tmp_path):
    """Pins the TRL behaviour ERC relies on: the scoring pass for old_per_token_logps runs on self.model."""
    args = tiny_args(tmp_path, erc_low=0.95, erc_high=1.05)
    set_seed(0)
    trainer = CEGPPOTrainer(
        model=tiny_model_dir, reward_funcs=digit_reward, args=args, train_dataset=arithmetic_dataset
    )
    trainer.model.train()
    output = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    logps, entropies = score(trainer, output)
    torch.testing.assert_close(output["old_per_token_logps"], logps)
    torch.testing.assert_close(output["old_entropies"], entropies)


def count_forwards(trainer_args, tiny_model_dir, dataset):
    set_seed(0)
    trainer = CEGPPOTrainer(model=tiny_model_dir, reward_funcs=digit_reward, args=trainer_args, train_dataset=dataset)
    calls = []
    trainer.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    trainer.train()
    return len(calls), trainer


def test_erc_adds_no_forward_pass_and_tight_band_masks_more(tiny_model_dir, arithmetic_dataset, tmp_path):
    plain, _ = count_forwards(tiny_args(tmp_path / "plain"), tiny_model_dir, arithmetic_dataset)
    tight, tight_trainer = count_forwards(
        tiny_args(tmp_path / "tight", erc_low=0.999, erc_high=1.001), tiny_model_dir, arithmetic_dataset
    )
    wide, wide_trainer = count_forwards(
        tiny_args(tmp_path / "wide", erc_low=0.5, erc_high=2.0), tiny_model_dir, arithmetic_dataset
    )
    assert plain == tight == wide

    def masked_fraction(trainer):
        low = logged(trainer, "entropy_ratio/clip_low_mean")
        high = logged(trainer, "entropy_ratio/clip_high_mean")
        return [a + b for a, b in zip(low, high, strict=True)]

    masked, wide_masked = masked_fraction(tight_trainer), masked_fraction(wide_trainer)
    assert masked[0] == wide_masked[0] == 0.0  # first update of a rollout batch: H_theta == H_old
    assert min(masked[1:]) > 0.5
    assert max(wide_masked) < 0.05
    ratio_min, ratio_max = logged(tight_trainer, "entropy_ratio/min"), logged(tight_trainer, "entropy_ratio/max")
    ratio_mean = logged(tight_trainer, "entropy_ratio/mean")
    assert all(low <= mean <= high for low, mean, high in zip(ratio_min, ratio_mean, ratio_max, strict=True))
    assert ratio_min[0] == ratio_max[0] == 1.0


def test_on_policy_config_says_ce_gppo_cannot_act(tiny_model_dir, arithmetic_dataset, tmp_path, caplog):
    args = tiny_args(tmp_path, steps_per_generation=1, erc_low=0.95, erc_high=1.05)
    with caplog.at_level(logging.WARNING, logger="ce_gppo_trl"):
        CEGPPOTrainer(model=tiny_model_dir, reward_funcs=digit_reward, args=args, train_dataset=arithmetic_dataset)
    messages = [record.getMessage() for record in caplog.records if "cannot act" in record.getMessage()]
    assert len(messages) == 1
    assert messages[0].startswith("loss_type='ce_gppo' and ERC (erc_low/erc_high) cannot act in this run")
    assert "gradient_accumulation_steps=1 is a multiple of steps_per_generation=1 x num_iterations=1" in messages[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ce_gppo_trl"):
        CEGPPOTrainer(
            model=tiny_model_dir, reward_funcs=digit_reward, args=tiny_args(tmp_path), train_dataset=arithmetic_dataset
        )
    assert not any("cannot act" in record.getMessage() for record in caplog.records)


def test_plain_grpo_config_is_refused(tiny_model_dir, arithmetic_dataset, tmp_path):
    with pytest.raises(TypeError, match="CEGPPOTrainer needs args=CEGPPOConfig"):
        CEGPPOTrainer(
            model=tiny_model_dir,
            reward_funcs=digit_reward,
            args=tiny_args(tmp_path, GRPOConfig),
            train_dataset=arithmetic_dataset,
        )


def test_erc_metrics_are_reduced_over_two_processes(tiny_model_dir, tmp_path):
    script = Path(__file__).parent / "scripts" / "erc_metrics_ddp.py"
    # accelerate 1.15's `--cpu` launcher starts a single process; `--multi_gpu` starts torchrun, and the script's
    # use_cpu=True makes every rank join a gloo process group on the CPU.
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", str(script), tiny_model_dir, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rho_rank{rank}.pt") for rank in range(2)]
    entries = [entry for entry in torch.load(tmp_path / "log_history.pt") if "entropy_ratio/mean" in entry]
    assert len(entries) == len(ranks[0]) == len(ranks[1]) == 4
    masked_any = False
    for step, entry in enumerate(entries):
        rho = torch.cat([ranks[0][step], ranks[1][step]])  # every completion token of both processes
        assert entry["entropy_ratio/mean"] == pytest.approx(rho.mean().item(), rel=1e-5)
        assert entry["entropy_ratio/min"] == pytest.approx(rho.min().item(), rel=1e-6)
        assert entry["entropy_ratio/max"] == pytest.approx(rho.max().item(), rel=1e-6)
        assert entry["entropy_ratio/clip_low_mean"] == pytest.approx((rho <= 0.99).float().mean().item(), abs=1e-6)
        assert entry["entropy_ratio/clip_high_mean"] == pytest.approx((rho >= 1.01).float().mean().item(), abs=1e-6)
        masked_any |= entry["entropy_ratio/clip_low_mean"] + entry["entropy_ratio/clip_high_mean"] > 0
        # The two processes really hold different tokens
        assert not torch.equal(ranks[0][step], ranks[1][step]) or step == 0
    assert masked_any
    # The entropy attribution under DDP: every part (7 token groups without the dual clip, momentum, weight decay,
    # other) is reduced over the processes, and they add up to the prediction.
    attributed = [entry for entry in entries if "entropy_attribution/predicted" in entry]
    assert [entry["step"] for entry in attributed] == [2, 4]
    for entry in attributed:
        parts = [value for key, value in entry.items() if key.startswith("entropy_attribution/part/")]
        assert len(parts) == 10 and sum(parts) == pytest.approx(entry["entropy_attribution/predicted"], rel=1e-4)
        assert entry["entropy_attribution/realised"] != 0


class VLLMStandIn:
    """The attributes `_check_vllm_logp_difference` and `_warn_if_on_policy` read, on a scripted stand-in."""

    _check_vllm_logp_difference = CEGPPOTrainer._check_vllm_logp_difference
    _warn_if_on_policy = CEGPPOTrainer._warn_if_on_policy

    def __init__(self, tmp_path, **overrides):
        from collections import defaultdict
        from types import SimpleNamespace

        from accelerate import Accelerator

        self.args = tiny_args(tmp_path, **overrides)
        self.use_vllm, self.vllm_importance_sampling_correction = True, self.args.vllm_importance_sampling_correction
        self.accelerator, self.model = Accelerator(cpu=True), SimpleNamespace(training=True)
        self.state, self._metrics = SimpleNamespace(global_step=6), {"train": defaultdict(list)}
        self._warned_vllm_logp_difference = False


def test_stale_vllm_weights_warn_once_when_the_logp_gap_passes_the_bound(tmp_path, caplog):
    trainer = VLLMStandIn(tmp_path, vllm_importance_sampling_correction=False, vllm_logp_difference_bound=0.2)
    old = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]])

    def rollout(shift):  # vLLM's log-probs of its samples, `shift` away from the trainer's on the scored tokens
        sampled = old - shift
        sampled[1, 0] = float("nan")  # a token vLLM could not score: left out, as TRL leaves it out
        sampled[0, 3] = 0.0  # padding: outside completion_mask
        mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
        return {"old_per_token_logps": old, "sampling_per_token_logps": sampled, "completion_mask": mask}

    with caplog.at_level(logging.WARNING, logger="ce_gppo_trl"):
        for shift in (0.01, 0.5, 0.9):
            trainer._check_vllm_logp_difference(rollout(shift))
    # TRL logs no gap with the IS correction off: this library logs it, over the 6 valid tokens
    assert trainer._metrics["train"]["sampling/sampling_logp_difference/mean"] == pytest.approx([0.01, 0.5, 0.9])
    (warning,) = [r.getMessage() for r in caplog.records if "vllm_logp_difference_bound" in r.getMessage()]
    assert "differ from the trainer's by 0.5 on average" in warning and "vllm_logp_difference_bound=0.2" in warning


def test_vllm_logp_gap_is_left_to_trl_when_it_logs_it_and_unmeasurable_runs_say_so(tmp_path, caplog):
    trainer = VLLMStandIn(tmp_path)  # IS correction on (TRL's default): TRL logs the metric itself
    mask = torch.ones(1, 2)
    trainer._check_vllm_logp_difference(
        {"old_per_token_logps": -mask, "sampling_per_token_logps": -mask, "completion_mask": mask}
    )
    assert "sampling/sampling_logp_difference/mean" not in trainer._metrics["train"]
    with caplog.at_level(logging.WARNING, logger="ce_gppo_trl"):
        VLLMStandIn(tmp_path, vllm_importance_sampling_correction=False)._warn_if_on_policy()  # off-policy
        assert not caplog.records
        on_policy = VLLMStandIn(tmp_path, vllm_importance_sampling_correction=False, steps_per_generation=1)
        on_policy._warn_if_on_policy()
    assert any("vllm_logp_difference_bound=0.1 cannot be checked" in r.getMessage() for r in caplog.records)


def changed_fraction(trainer, before):
    after = list(trainer.model.parameters())
    changed = sum((p.detach() != b).sum().item() for p, b in zip(after, before, strict=True))
    return changed / sum(b.numel() for b in before)


def train_from(trainer):
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    return changed_fraction(trainer, before)


def test_bf16_weights_under_a_plain_optimizer_lose_updates_and_are_refused(
    tiny_model_dir, arithmetic_dataset, tmp_path, monkeypatch
):
    def trainer(**overrides):
        args = tiny_args(tmp_path, learning_rate=1e-6, erc_low=0.95, erc_high=1.05, **overrides)
        set_seed(args.seed)
        return CEGPPOTrainer(
            model=tiny_model_dir, reward_funcs=digit_reward, args=args, train_dataset=arithmetic_dataset
        )

    with pytest.raises(ValueError, match=r"dtype=bfloat16 is not allowed.*dtype: float32.*bf16: true"):
        trainer(model_init_kwargs={"dtype": "bfloat16"})
    # What the refusal prevents: AdamW at lr 1e-6 on bf16 weights rounds almost every update away (2.0% of the weights
    # changed; seeds 0-4 with OMP_NUM_THREADS=1: 1.96-2.05%), while float32 master weights with bf16 autocast take
    # them (99.4%; seeds 0-4: 99.39-99.46%). Margins: below 20% / above 90%.
    with monkeypatch.context() as patched:
        patched.setattr(CEGPPOTrainer, "_check_master_weights", lambda self: None)
        assert train_from(trainer(model_init_kwargs={"dtype": "bfloat16"})) < 0.2
    assert train_from(trainer(model_init_kwargs={"dtype": "float32"}, bf16=True)) > 0.9


def test_bf16_lora_adapters_get_float32_master_weights(tiny_model_dir, arithmetic_dataset, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    # TRL casts adapters on a quantized base to bf16 (QLoRA); autocast_adapter_dtype=False gives the same without one
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"), autocast_adapter_dtype=False)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
    trainer = CEGPPOTrainer(
        model=model, reward_funcs=digit_reward, args=tiny_args(tmp_path), train_dataset=arithmetic_dataset
    )
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trained and {p.dtype for p in trained} == {torch.float32}
    assert {p.dtype for p in trainer.model.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_bf16_autocast_runs_on_cpu(tiny_model_dir, arithmetic_dataset, tmp_path, monkeypatch):
    import trl.trainer.utils as trl_utils

    # TRL's fused LM head computes the logits in the autocast dtype when autocast is on, else in the hidden states'
    # dtype (trl/kernels/chunked_logprob.py, ChunkedLogProbFunction.forward): record which, at every scoring and
    # training pass.
    logits_dtypes = []
    fused_lm_head = trl_utils._ChunkedLogProbFunction

    class RecordingLMHead:
        @staticmethod
        def apply(hidden, *args):
            autocast = torch.is_autocast_enabled(hidden.device.type)
            logits_dtypes.append(torch.get_autocast_dtype(hidden.device.type) if autocast else hidden.dtype)
            return fused_lm_head.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", RecordingLMHead)
    runs = {}
    for bf16 in (False, True):
        logits_dtypes.clear()
        args = tiny_args(tmp_path / str(bf16), bf16=bf16, erc_low=0.95, erc_high=1.05)
        runs[bf16] = train(CEGPPOTrainer, tiny_model_dir, arithmetic_dataset, args)
        assert set(logits_dtypes) == {torch.bfloat16 if bf16 else torch.float32}
        assert runs[bf16].accelerator.mixed_precision == ("bf16" if bf16 else "no")
    # Same rollouts and weights at the first update, bf16 rounding apart: the logged entropy and gradient norm move
    # by a little, never by nothing (relative, seeds 0-4 with OMP_NUM_THREADS=1: entropy 8e-8 to 1.2e-6, gradient
    # norm 1e-4 to 9e-4; bound 5%). The loss does not: the first update's ratio is exactly 1 in both.
    for key, bound in (("entropy", 0.05), ("grad_norm", 0.05)):
        fp32, bf16 = logged(runs[False], key)[0], logged(runs[True], key)[0]
        assert 0 < abs(bf16 - fp32) < bound * abs(fp32), key


class RearrangedScoring(CEGPPOTrainer):
    """Scores the rollout batch (TRL's no-grad old-logps pass) on its rows reversed, in one chunk instead of chunks of
    per_device_train_batch_size, and with `ulp` on, with the last hidden states moved by one bf16 step (2^-8,
    relative) on two thirds of their entries: a stand-in for a GPU's shape-dependent bf16 kernels."""

    ulp = False

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        if torch.is_grad_enabled():
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        kwargs.pop("batch_size", None)
        order = torch.arange(input_ids.size(0) - 1, -1, -1)
        steps = torch.randint(-1, 2, (input_ids.numel(), 32), generator=torch.Generator().manual_seed(0)).float()

        def one_bf16_step(module, inputs, output):
            return output * (1 + 2.0**-8 * steps[: output.shape[:-1].numel()].view(output.shape))

        hook = self.model.model.norm.register_forward_hook(one_bf16_step) if self.ulp else None
        try:
            out = super()._get_per_token_logps_and_entropies(
                model, input_ids[order], attention_mask[order], logits_to_keep, input_ids.size(0), **kwargs
            )
        finally:
            if hook is not None:
                hook.remove()
        back = torch.argsort(order)
        if isinstance(self._old_entropies, torch.Tensor):
            self._old_entropies, self._old_entropies_logps = self._old_entropies[back], self._old_entropies_logps[back]
        return tuple(None if x is None or x.dim() == 0 else x[back] for x in out)


def test_first_update_ratio_noise_is_bounded_with_float32_logits(arithmetic_dataset, tmp_path):
    # Peaked next-token distributions (wide init: entropy about 0.5 nats), where the entropy ratio is most sensitive.
    model_dir = save_tiny_model(tmp_path / "peaked", initializer_range=1.0)
    erc = {"bf16": True, "model_init_kwargs": {"dtype": "float32"}, "erc_low": 0.95, "erc_high": 1.05}

    def first_update(ulp, fp32_head):
        RearrangedScoring.ulp = ulp
        args = tiny_args(tmp_path / f"{ulp}{fp32_head}", loss_type="ce_gppo", cast_lm_head_to_fp32=fp32_head, **erc)
        run = train(RearrangedScoring, model_dir, arithmetic_dataset, args)
        masked = logged(run, "entropy_ratio/clip_low_mean")[0] + logged(run, "entropy_ratio/clip_high_mean")[0]
        widest = max(1 - logged(run, "entropy_ratio/min")[0], logged(run, "entropy_ratio/max")[0] - 1)
        return masked, logged(run, "clip_ratio/region_mean")[0], widest

    # What a CPU shows: its bf16 kernels give the same numbers whatever the rows' order and chunking, so the first
    # update's entropy ratio is exactly 1 even with bf16 logits. Whether a GPU's kernels do is for gpu_check.py.
    assert first_update(ulp=False, fp32_head=False) == (0.0, 0.0, 0.0)
    # One bf16 step of noise in the scoring pass. Rounded to bf16, the logits amplify it: the first update's entropy
    # ratios reach 1 -/+ 0.047 to 0.116 and 0% to 6.8% of the tokens leave [0.95, 1.05] (seeds 0-4,
    # OMP_NUM_THREADS=1). In float32 (cast_lm_head_to_fp32) the ratios stay within 1 -/+ 0.031 to 0.042 and none
    # leaves the band (bound: gpu_check's 1%). CE-GPPO's ratio clip (0.2 / 0.28) is far from this noise.
    bf16_masked, bf16_clipped, bf16_widest = first_update(ulp=True, fp32_head=False)
    masked, clipped, widest = first_update(ulp=True, fp32_head=True)
    assert masked < 0.01 and widest < 0.05 and clipped == bf16_clipped == 0
    assert bf16_widest > widest and bf16_masked >= masked


def test_checkpoints_inside_a_rollout_batch_move_to_its_end(tiny_model_dir, arithmetic_dataset, tmp_path, caplog):
    # 4 updates per rollout batch: save_steps=3 would checkpoint at step 3, inside the first rollout batch, and a run
    # resumed there would generate a new batch at once. The checkpoint moves to step 4; the final one stays at 6.
    args = tiny_args(tmp_path, save_strategy="steps", save_steps=3, max_steps=6)
    assert [step for step in range(9) if args.at_rollout_boundary(step)] == [0, 4, 8]
    with caplog.at_level(logging.WARNING, logger="ce_gppo_trl"):
        trainer = train(CEGPPOTrainer, tiny_model_dir, arithmetic_dataset, args)
    assert any("save_steps=3 is not a multiple" in record.getMessage() for record in caplog.records)
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert trainer.state.global_step == 6


def test_signed_entropy_term_covers_the_tokens_of_trls_bonus(scoring_trainer, monkeypatch):
    # Issue 33: with top_entropy_quantile < 1, the controller's term -coef * mean(H) is TRL's bonus at entropy_coef
    # = coef over the same tokens (TRL's high-entropy ones), in value and gradient, not over every token.
    trainer, inputs = scoring_trainer
    monkeypatch.setattr(trainer.args, "erc_low", None)
    monkeypatch.setattr(trainer.args, "erc_high", None)
    monkeypatch.setattr(trainer, "top_entropy_quantile", 0.5)
    monkeypatch.setattr(trainer, "entropy_control_coef", 0.3)
    signed_loss, signed_grads = loss_and_grads(trainer, trainer._compute_policy_loss, inputs)
    monkeypatch.setattr(trainer, "entropy_control_coef", 0.0)
    monkeypatch.setattr(trainer, "entropy_coef", 0.3)
    monkeypatch.setattr(trainer, "_entropy_bonus_enabled", True)
    bonus_loss, bonus_grads = loss_and_grads(trainer, trainer._compute_policy_loss, inputs)
    torch.testing.assert_close(signed_loss, bonus_loss)
    for signed, bonus in zip(signed_grads, bonus_grads, strict=True):
        torch.testing.assert_close(signed, bonus)
