"""`examples/train_ce_gppo.py` under `accelerate launch`: 2-process DDP, LoRA, QLoRA, reload, resume.

Every run is a real subprocess on CPU with the quickstart recipe and a tiny random Llama (conftest.py) in place of the
toy model. For the DDP comparison, `seeded_rollout` (below) replaces generation: each completion is sampled with its
own generator seeded by (step, row of the global batch), so both process layouts see the same rollouts and any
difference comes from the distributed training itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_ce_gppo.py"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@torch.no_grad()
def seeded_rollout(prompts: list, trainer) -> dict[str, list]:
    """A TRL `rollout_func` whose samples do not depend on how the generation batch is split over processes.

    Gumbel-max sampling at the trainer's temperature, with the noise of global row `rank * len(prompts) + i` drawn
    from a generator seeded by `(seed, global_step, row)`. Rows of one generation batch are contiguous per process
    (accelerate gives process `r` the `r`-th sampler batch), so the row index is the same in every layout.
    """
    args, tokenizer = trainer.args, trainer.processing_class
    model = trainer.accelerator.unwrap_model(trainer.model)
    prompt_ids = trainer._tokenize_prompts(prompts)[0]
    width, vocab = max(len(ids) for ids in prompt_ids), model.config.vocab_size
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in prompt_ids])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids])
    first_row = trainer.accelerator.process_index * len(prompts)
    noise = []
    for i in range(len(prompts)):
        generator = torch.Generator().manual_seed(hash((args.seed, trainer.state.global_step, first_row + i)) % 2**62)
        uniform = torch.rand(args.max_completion_length, vocab, generator=generator).clamp_min(1e-20)
        noise.append(-torch.log(-torch.log(uniform)))
    noise = torch.stack(noise)
    completions = [[] for _ in prompts]
    logprobs = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    for t in range(args.max_completion_length):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits[:, -1]
        logps = torch.log_softmax(logits.float() / args.temperature, dim=-1)
        tokens = (logps + noise[:, t]).argmax(-1)
        for i in range(len(prompts)):
            if not done[i]:
                completions[i].append(int(tokens[i]))
                logprobs[i].append(float(logps[i, tokens[i]]))
        done |= tokens == tokenizer.eos_token_id
        if done.all():
            break
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones(len(prompts), 1, dtype=attention_mask.dtype)], dim=1)
    return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": logprobs}


def digit_reward(completions: list[str], **kwargs) -> list[float]:
    """Fraction of digits in a completion: a reward with spread even for an untrained random model."""
    return [sum(char.isdigit() for char in text) / 8 for text in completions]


def free_port() -> int:
    """A free TCP port for torchrun's rendezvous, so parallel test runs do not meet on the default 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(*args: str, num_processes: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch --cpu` of the example script with the quickstart recipe and `args` as overrides."""
    command = [
        # accelerate 1.15's `--cpu` launcher starts ONE process whatever --num_processes says (several need mpirun);
        # `--multi_gpu` starts torchrun, and the recipe's use_cpu: true makes it CPU DDP over gloo.
        *(sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"),
        *(("--multi_gpu", "--main_process_port", str(free_port())) if num_processes > 1 else ("--cpu",)),
        *("--num_processes", str(num_processes), "--mixed_precision", "no", "--dynamo_backend", "no"),
        *(str(SCRIPT), "--config", str(QUICKSTART), *args),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def log_history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def tiny_overrides(model_dir: str, output_dir: Path, *extra: str) -> list[str]:
    return [
        *("--model_name_or_path", model_dir, "--output_dir", str(output_dir)),
        *("--num_train_examples", "256", "--logging_steps", "1", "--save_strategy", "no"),
        *("--reward_funcs", "test_launch.digit_reward", *extra),
    ]


def generate_text(model, tokenizer, prompt: str = "12+7=") -> str:
    inputs = tokenizer([prompt], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])


def test_ddp_two_processes_matches_one_process_with_the_same_global_batch(tiny_model_dir, tmp_path):
    # One generation batch (8 prompts x 8 rollouts = 64 completions) is used for 2 optimizer updates
    # (num_iterations 2): the second update is off-policy, so the CE-GPPO clipping regions are in play.
    common = ("--max_steps", "2", "--steps_per_generation", "1", "--num_iterations", "2", "--learning_rate", "1e-3")
    common += ("--rollout_func", "test_launch.seeded_rollout")
    one, two = tmp_path / "one", tmp_path / "two"
    single = launch(*tiny_overrides(tiny_model_dir, one, *common, "--per_device_train_batch_size", "64"))
    ddp = launch(*tiny_overrides(tiny_model_dir, two, *common, "--per_device_train_batch_size", "32"), num_processes=2)
    assert "(2 steps, 1 process)" in single.stdout and "(2 steps, 2 processes)" in ddp.stdout

    logs = {name: [e for e in log_history(d) if "loss" in e] for name, d in (("one", one), ("two", two))}
    assert [e["step"] for e in logs["one"]] == [e["step"] for e in logs["two"]] == [1, 2]
    assert "reward" in logs["one"][0] and logs["one"][0]["reward_std"] > 0  # the rollouts carry a learning signal
    for a, b in zip(logs["one"], logs["two"], strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - {"step_time"}:  # every logged metric but the wall time
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    # The second update is off-policy: pi_theta has moved, so the ratio is no longer 1 everywhere.
    assert logs["one"][1]["loss"] != logs["one"][0]["loss"]

    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    final_one, final_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    moved = max((final_one[k] - initial[k]).abs().max().item() for k in initial)
    gap = max((final_one[k] - final_two[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # two Adam steps at lr 1e-3 move the weights ...
    assert gap < 1e-5  # ... identically in both layouts


def test_full_model_saves_reloads_generates_and_resumes(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "full"
    launch(
        *tiny_overrides(
            tiny_model_dir,
            out,
            "--max_steps",
            "2",
            "--save_strategy",
            "steps",
            "--save_steps",
            "1",
            "--save_total_limit",
            "2",
            # One update per rollout batch, so that step 1 is a rollout boundary: a checkpoint inside a rollout
            # batch moves to its end (RolloutAlignedSaves), and this test resumes from step 1.
            "--steps_per_generation",
            "1",
        )
    )
    checkpoint = out / "checkpoint-1"
    assert (checkpoint / "optimizer.pt").is_file() and (out / "checkpoint-2").is_dir()

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), initial.parameters(), strict=True))
    assert isinstance(generate_text(model, tokenizer), str)

    resumed = tmp_path / "resumed"
    result = launch(
        *tiny_overrides(tiny_model_dir, resumed, "--max_steps", "3", "--steps_per_generation", "1"),
        *("--resume_from_checkpoint", str(checkpoint)),
    )
    history = [e for e in log_history(resumed) if "loss" in e]
    assert [e["step"] for e in history] == [1, 2, 3], result.stdout[-2000:]
    # Step 1 was not trained again: its record, wall time included, is the checkpoint's.
    assert history[0] == next(e for e in log_history(out) if e["step"] == 1 and "loss" in e)


@pytest.mark.parametrize(
    ("name", "extra"),
    [("lora", ()), ("qlora", ("--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4"))],
)
def test_lora_and_qlora_adapters_train_save_and_reload(tiny_model_dir, tmp_path, name, extra):
    from peft import AutoPeftModelForCausalLM, PeftConfig
    from transformers import AutoTokenizer

    out = tmp_path / name
    result = launch(
        *tiny_overrides(tiny_model_dir, out, "--max_steps", "2", "--learning_rate", "1e-2"),
        *("--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "all-linear", *extra),
    )
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)
    assert not (out / "model.safetensors").exists()  # the adapter alone is saved, not a copy of the base model
    lora_b = [value for key, value in adapter.items() if "lora_B" in key]
    assert max(value.abs().max().item() for value in lora_b) > 0  # B starts at zero: the adapter was trained

    assert PeftConfig.from_pretrained(out).r == 8
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    assert isinstance(generate_text(model, AutoTokenizer.from_pretrained(out)), str)
    assert ("base model:     4-bit" in result.stdout) == (name == "qlora")


def rank_reward(completions: list[str], **kwargs) -> list[float]:
    """`digit_reward` on process 0; the same reward for every completion on process 1, whose groups all carry no
    signal, so that its dynamic-sampling refill can never succeed while process 0's does."""
    if int(os.environ.get("RANK", "0")) == 1:
        return [0.0] * len(completions)
    return digit_reward(completions)


def test_dynamic_sampling_and_nll_on_two_processes(tiny_model_dir, tmp_path):
    # 16 x 4 = 64 completions = 8 groups per process and rollout batch; process 1 stays short in every round, so
    # both processes must run all dynamic_sampling_max_rounds extra rounds together (a disagreement would hang the
    # collective generation and reward gathering, and the launch would time out).
    # The other recipe fields ride along: verl's warm-up (lr 0 for the first rollout batch) and the prompt cap.
    out = tmp_path / "dynamic"
    launch(
        *tiny_overrides(tiny_model_dir, out, "--max_steps", "8", "--per_device_train_batch_size", "16"),
        *("--reward_funcs", "test_launch.rank_reward", "--dynamic_sampling", "true"),
        *("--dynamic_sampling_max_rounds", "2", "--positive_nll_coef", "0.1", "--max_prompt_length", "3"),
        *("--lr_scheduler_type", "constant", "--warmup_rollout_batches", "1"),
        num_processes=2,
    )
    history = log_history(out)
    rollouts = [entry for entry in history if "dynamic_sampling/rounds" in entry]
    assert len(rollouts) == 2  # 8 optimizer updates = two rollout batches (steps_per_generation 4)
    for rollout in rollouts:
        assert rollout["dynamic_sampling/rounds"] == 2
        # Process 1's 8 slots are masked; process 0 fills its own (digit rewards of a random model are mixed).
        assert rollout["dynamic_sampling/groups_masked"] == 8
        assert rollout["dynamic_sampling/groups_dropped"] >= 3 * 8
    updates = [entry for entry in history if "loss" in entry]
    assert all("positive_nll" in entry for entry in updates)
    assert [entry["learning_rate"] for entry in updates] == [0.0] * 4 + [2e-4] * 4


@pytest.mark.parametrize(
    ("loss_type", "extra"),
    [
        # Every token in the band and a share of 1: all tokens the PPO clip leaves are detached, so nothing moves.
        ("clip_cov", ("--clip_cov_ratio", "1.0", "--clip_cov_lb", "-1000000.0", "--clip_cov_ub", "1000000.0")),
        ("kl_cov", ("--kl_cov_ratio", "0.5", "--ppo_kl_coef", "1.0")),
    ],
)
def test_clip_cov_and_kl_cov_train_on_two_processes(tiny_model_dir, tmp_path, loss_type, extra):
    # 3 updates of one rollout batch per process (steps_per_generation 4): the 2nd and 3rd are off-policy.
    out = tmp_path / loss_type
    launch(
        *tiny_overrides(tiny_model_dir, out, "--max_steps", "3", "--learning_rate", "1e-3"),
        *("--loss_type", loss_type, *extra),
        num_processes=2,
    )
    updates = [entry for entry in log_history(out) if "loss" in entry]
    assert [entry["step"] for entry in updates] == [1, 2, 3]
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    final = load_file(out / "model.safetensors")
    moved = max((final[k] - initial[k]).abs().max().item() for k in initial)
    shares = [entry[f"{loss_type}/selected_mean"] for entry in updates]
    if loss_type == "clip_cov":
        # The weights never move, so every update is on-policy in effect: no PPO clipping and every token selected.
        assert moved == 0.0
        assert shares == [1.0] * 3 and all(entry["clip_ratio/region_mean"] == 0.0 for entry in updates)
    else:
        # Each process penalises int(0.5 * N_p) of its N_p >= 64 loss tokens (floors lose < 1 token per process).
        assert all(0.5 - 2 / 128 < share <= 0.5 for share in shares), shares
        assert moved > 1e-3
