import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ce_gppo_trl.toy import (
    BUILD_MARKER,
    build_tokenizer,
    build_toy_model,
    evaluate_arithmetic,
    format_completion,
    make_arithmetic_dataset,
)

TINY = {"sft_steps": 40, "sft_batch_size": 32, "hidden_size": 32, "num_layers": 1, "eval_examples": 20}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return build_toy_model(str(tmp_path_factory.mktemp("toy") / "model"), **TINY)


def test_tokenizer_round_trips_prompt_and_completion():
    tokenizer = build_tokenizer()
    text = "12+7=" + format_completion("19")
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]

    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<bos>",
        "1",
        "2",
        "+",
        "7",
        "=",
        "\\boxed{",
        "1",
        "9",
        "}",
        "<eos>",
    ]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "12+7=\\boxed{19}"
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id not in ids


def test_dataset_columns_answers_and_determinism():
    dataset = make_arithmetic_dataset(50, seed=3)

    assert dataset.column_names == ["prompt", "solution"]
    for prompt, solution in zip(dataset["prompt"], dataset["solution"], strict=True):
        a, op, b = prompt[:-1].partition("+") if "+" in prompt else prompt[:-1].partition("-")
        assert prompt.endswith("=") and int(solution) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    assert make_arithmetic_dataset(50, seed=3)[:] == dataset[:]
    assert make_arithmetic_dataset(50, seed=4)["prompt"] != dataset["prompt"]
    assert all("-" not in p for p in make_arithmetic_dataset(50, operations="+", max_operand=9)["prompt"])


def test_build_toy_model_trains_saves_and_loads(tiny_model_dir):
    with open(os.path.join(tiny_model_dir, BUILD_MARKER)) as f:
        losses = json.load(f)["sft_loss"]
    assert len(losses) == TINY["sft_steps"]
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    inputs = tokenizer(["12+7=", "3-40="], return_tensors="pt", padding=True)
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert output.shape[0] == 2 and output.shape[1] > inputs["input_ids"].shape[1]
    # Even 40 steps teach the answer format: the first generated token is `\boxed{`.
    assert tokenizer.convert_ids_to_tokens(output[:, inputs["input_ids"].shape[1]].tolist()) == ["\\boxed{"] * 2

    torch.manual_seed(0)
    accuracy = evaluate_arithmetic(model, tokenizer, make_arithmetic_dataset(20, seed=5), temperature=0.0)
    assert 0.0 <= accuracy <= 1.0


def test_build_toy_model_reuses_cache_and_refuses_other_arguments(tiny_model_dir):
    weights = os.path.join(tiny_model_dir, "model.safetensors")
    mtime = os.path.getmtime(weights)

    assert build_toy_model(tiny_model_dir, **TINY) == tiny_model_dir
    assert os.path.getmtime(weights) == mtime
    with pytest.raises(ValueError, match="sft_steps"):
        build_toy_model(tiny_model_dir, **{**TINY, "sft_steps": 41})
    # The build went through a temporary sibling that was renamed, leaving nothing else behind.
    assert os.listdir(os.path.dirname(tiny_model_dir)) == ["model"]


def test_build_toy_model_is_deterministic(tmp_path, tiny_model_dir):
    other = build_toy_model(str(tmp_path / "again"), **TINY)

    first = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    second = AutoModelForCausalLM.from_pretrained(other).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
