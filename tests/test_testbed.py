"""The regime testbed: task, split, scratchpad, scoring and the cached SFT build."""

import json
import os
import random

import pytest
import torch

from ce_gppo_trl.testbed import (
    BUILD_MARKER,
    boxed_answer,
    build_testbed_model,
    heldout_problems,
    random_problem,
    sample_correct,
    scratchpad,
    train_problems,
)
from ce_gppo_trl.toy import BOXED, build_tokenizer


def test_scratchpad_is_the_chain_of_partial_sums():
    assert scratchpad("3+5+2+7+4=") == "3+5=8 8+2=10 10+7=17 17+4=21 \\boxed{21}"
    assert scratchpad("0+0=") == "0+0=0 \\boxed{0}"


def test_every_completion_has_at_least_20_reasoning_tokens_and_the_right_answer():
    tokenizer = build_tokenizer()
    rng = random.Random(0)
    for _ in range(500):
        row = random_problem(rng)
        text = scratchpad(row["prompt"])
        reasoning = text[: text.index(BOXED)]
        assert len(tokenizer(reasoning, add_special_tokens=False)["input_ids"]) >= 20
        assert boxed_answer(text) == row["solution"] == str(sum(int(t) for t in row["prompt"][:-1].split("+")))
        # the tokenizer round-trips it: every character is in the vocabulary
        ids = tokenizer(row["prompt"] + text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == row["prompt"] + text


def test_heldout_is_fixed_distinct_and_never_in_training():
    held_out = heldout_problems(256)
    assert held_out["prompt"] == heldout_problems(256)["prompt"]  # the same for every run
    assert len(set(held_out["prompt"])) == 256
    excluded = set(held_out["prompt"])
    train = train_problems(5000, seed=3, exclude=excluded)
    assert excluded.isdisjoint(train["prompt"])
    assert len(set(train["prompt"])) > 4000  # 100,000 distinct problems: thousands of distinct training prompts
    assert train["prompt"] != train_problems(5000, seed=4, exclude=excluded)["prompt"]


def test_boxed_answer_takes_the_last_box_and_rejects_unclosed_ones():
    assert boxed_answer("1+2=3 \\boxed{4} \\boxed{3}") == "3"
    assert boxed_answer("1+2=3 \\boxed{3") is None
    assert boxed_answer("1+2=3") is None


def test_build_is_cached_refuses_other_arguments_and_scores_samples(tmp_path):
    path = str(tmp_path / "tb")
    kwargs = {"sft_steps": 3, "hidden_size": 32, "num_layers": 1, "heldout": 8, "eval_k": 1}
    assert build_testbed_model(path, **kwargs) == path
    record = json.loads((tmp_path / "tb" / BUILD_MARKER).read_text())
    assert len(record["sft_loss"]) == 3 and 0 <= record["accuracy_sampled"] <= 1
    mtime = os.path.getmtime(os.path.join(path, BUILD_MARKER))
    assert build_testbed_model(path, **kwargs) == path  # reused, not rebuilt
    assert os.path.getmtime(os.path.join(path, BUILD_MARKER)) == mtime
    with pytest.raises(ValueError, match="label_smoothing"):
        build_testbed_model(path, **{**kwargs, "label_smoothing": 0.1})

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    correct = sample_correct(model, tokenizer, heldout_problems(8), k=3, max_new_tokens=4)
    assert correct.shape == (8, 3) and correct.dtype == torch.bool
    assert not correct.any()  # 4 new tokens cannot reach a boxed answer


@pytest.mark.slow
def test_default_build_leaves_room_for_rl(tmp_path):
    """The published testbed (~1 minute): greedy nearly always right, sampled at T = 1 right 0.15-0.5 of the time
    (measured 0.95 / 0.21; margins hold for the build's seed-0 stream with OMP_NUM_THREADS=1)."""
    path = build_testbed_model(str(tmp_path / "tb"), label_smoothing=0.03)
    record = json.loads((tmp_path / "tb" / BUILD_MARKER).read_text())
    assert record["accuracy_greedy"] >= 0.85
    assert 0.15 <= record["accuracy_sampled"] <= 0.5
    assert path
