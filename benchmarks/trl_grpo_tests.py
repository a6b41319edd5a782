"""Run TRL's own GRPO trainer tests offline, once with `GRPOTrainer` and once with `CEGPPOTrainer` swapped in.

TRL's test file is not in the pip package: give a TRL git directory (the `fetch` of github:huggingface/trl) and a
commit. The script writes a run folder with that commit's `tests/test_grpo_trainer.py` and `tests/testing_utils.py`,
local stand-ins for the hub ids they load (tiny random models of each text architecture under the same
`trl-internal-testing/<name>` paths, with an ASCII character tokenizer and a chat template; the `zen` prompt-only
dataset with the Zen of Python as prompts) and a `conftest.py` that, with `SWAP=1`, replaces `trl.GRPOTrainer` /
`trl.GRPOConfig` by `CEGPPOTrainer` / `CEGPPOConfig` at their library defaults (`loss_type="ce_gppo"`); every
config gets `use_cpu=True` (the tests assume an accelerator for their bf16 default). Vision
tests (`TestGRPOTrainerVLM`) and accelerator-only ones are deselected: no local vision stand-ins.

    OMP_NUM_THREADS=1 python benchmarks/trl_grpo_tests.py --trl-git /work/.mirror/huggingface+trl/repo \
        --commit b9fb3aed2 --run-dir /tmp/trl-grpo-tests [-k EXPR]

Prints the pass / fail / skip counts of both runs and the tests whose outcome differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

# Zen of Python lines as prompts: TRL's `zen` dataset is built from them.
ZEN = [
    "Beautiful is better than",
    "Explicit is better than",
    "Simple is better than",
    "Complex is better than",
    "Flat is better than",
    "Sparse is better than",
    "Readability",
    "Special cases aren't special enough to",
    "Although practicality beats",
    "Errors should never pass",
    "Unless explicitly",
    "In the face of ambiguity, refuse the",
    "There should be one-- and preferably only one --",
    "Although that way may not be obvious at first unless you're",
    "Now is better than",
    "Although never is often better than",
    "If the implementation is hard to explain, it's a",
    "If the implementation is easy to explain, it may be a",
    "Namespaces are one honking great idea -- let's do",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# hub id -> (model type, head); small enough to train a few steps on one CPU core.
MODELS = {
    "tiny-Qwen2ForCausalLM-2.5": ("qwen2", "causal"),
    "tiny-Qwen2ForSequenceClassification-2.5": ("qwen2", "classification"),
    "tiny-Qwen3ForCausalLM": ("qwen3", "causal"),
    "tiny-Qwen3ForSequenceClassification": ("qwen3", "classification"),
    "tiny-LlamaForCausalLM-3.2": ("llama", "causal"),
    "tiny-LlamaForSequenceClassification-3.2": ("llama", "classification"),
    "tiny-MistralForCausalLM-0.2": ("mistral", "causal"),
    "tiny-Gemma2ForCausalLM": ("gemma2", "causal"),
    "tiny-Cohere2ForCausalLM": ("cohere2", "causal"),
    "tiny-Qwen3MoeForCausalLM": ("qwen3_moe", "causal"),
    "tiny-GptOssForCausalLM": ("gpt_oss", "causal"),
    "tiny-Glm4MoeForCausalLM": ("glm4_moe", "causal"),
}

CONFTEST = """
import ast
import importlib
import os

import datasets
import transformers

import trl

_import_utils = importlib.import_module("trl.import_utils")
# The commit's testing_utils may import availability checks this TRL release lacks: they count as unavailable.
_source = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "testing_utils.py")).read()
for _node in ast.walk(ast.parse(_source)):
    if isinstance(_node, ast.ImportFrom) and _node.module == "trl.import_utils":
        for _alias in _node.names:
            if not hasattr(_import_utils, _alias.name):
                setattr(_import_utils, _alias.name, lambda: False)

# TRL's tests assume an accelerator for bf16; here every config trains on the CPU.
_post_init = transformers.TrainingArguments.__post_init__


def _cpu_post_init(self):
    self.use_cpu = True
    _post_init(self)


transformers.TrainingArguments.__post_init__ = _cpu_post_init

if os.environ.get("SWAP") == "1":
    import ce_gppo_trl

    trl.GRPOTrainer = ce_gppo_trl.CEGPPOTrainer
    trl.GRPOConfig = ce_gppo_trl.CEGPPOConfig

_HERE = os.path.dirname(os.path.abspath(__file__))
_load_dataset = datasets.load_dataset


def load_dataset(path, name=None, split=None, streaming=False, **kwargs):
    if not str(path).startswith("trl-internal-testing/zen") or "image" in str(path):
        return _load_dataset(path, name, split=split, streaming=streaming, **kwargs)
    local = datasets.load_from_disk(os.path.join(_HERE, "zen", name))
    if split is not None:
        local = local[split]
    if streaming:
        if isinstance(local, datasets.DatasetDict):
            return datasets.IterableDatasetDict({key: value.to_iterable_dataset() for key, value in local.items()})
        return local.to_iterable_dataset()
    return local


datasets.load_dataset = load_dataset
"""


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"]
    vocab = {token: i for i, token in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_models(root: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    tokenizer = build_tokenizer()
    for name, (model_type, head) in MODELS.items():
        path = root / "trl-internal-testing" / name
        if (path / "config.json").exists():
            continue
        fields = {
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "max_position_embeddings": 512,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if "moe" in model_type or model_type == "gpt_oss":
            fields |= {"num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 2, "n_routed_experts": 4}
            fields |= {"moe_intermediate_size": 16, "first_k_dense_replace": 0}
        config = AutoConfig.for_model(model_type, **fields)
        torch.manual_seed(0)
        if head == "classification":
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)


def build_datasets(root: Path) -> None:
    from datasets import Dataset, DatasetDict

    standard = [{"prompt": line} for line in ZEN]
    conversational = [{"prompt": [{"role": "user", "content": line}]} for line in ZEN]
    for name, rows in (("standard_prompt_only", standard), ("conversational_prompt_only", conversational)):
        path = root / "zen" / name
        if not path.exists():
            DatasetDict({"train": Dataset.from_list(rows[:17]), "test": Dataset.from_list(rows[17:])}).save_to_disk(
                str(path)
            )


def prepare(trl_git: str, commit: str, run_dir: Path) -> None:
    tests = run_dir / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    for name in ("test_grpo_trainer.py", "testing_utils.py", "__init__.py"):
        text = subprocess.run(
            ["git", "-C", trl_git, "show", f"{commit}:tests/{name}"], check=True, capture_output=True, text=True
        ).stdout
        (tests / name).write_text(text)
    (tests / "conftest.py").write_text(CONFTEST)
    build_models(run_dir)
    build_datasets(tests)


def run(run_dir: Path, swap: bool, select: str | None, timeout: int) -> dict[str, str]:
    report = run_dir / f"report-{'swap' if swap else 'trl'}.json"
    command = [sys.executable, "-m", "pytest", "tests/test_grpo_trainer.py", "-q", "-p", "no:cacheprovider"]
    command += ["-o", "addopts=", "-m", "not slow", "--deselect", "tests/test_grpo_trainer.py::TestGRPOTrainerVLM"]
    command += [f"--junitxml={report.with_suffix('.xml')}"]
    if select:
        command += ["-k", select]
    env = {**os.environ, "SWAP": "1" if swap else "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(command, cwd=run_dir, env=env, capture_output=True, text=True, timeout=timeout)
    (run_dir / f"pytest-{'swap' if swap else 'trl'}.log").write_text(result.stdout + result.stderr)
    outcomes = {}
    for case in ElementTree.parse(report.with_suffix(".xml")).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = kinds[0].upper() if kinds else "PASSED"
    report.write_text(json.dumps(outcomes, indent=1))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl-git", required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("-k", dest="select", default=None)
    parser.add_argument("--timeout", type=int, default=3600)
    args = parser.parse_args()
    prepare(args.trl_git, args.commit, args.run_dir)
    results = {swap: run(args.run_dir, swap, args.select, args.timeout) for swap in (False, True)}
    for swap, outcomes in results.items():
        counts = {status: list(outcomes.values()).count(status) for status in sorted(set(outcomes.values()))}
        print(f"{'CEGPPOTrainer' if swap else 'GRPOTrainer'}: {counts}")
    for test in sorted(set(results[False]) | set(results[True])):
        trl, ours = results[False].get(test), results[True].get(test)
        if trl != ours:
            print(f"  {test}: TRL {trl}, CEGPPOTrainer {ours}")


if __name__ == "__main__":
    main()
