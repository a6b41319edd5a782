"""The real model's task: a fixed held-out split whose questions and sums are never trained on, and its format."""

import pytest

from ce_gppo_trl.data import load_math_dataset
from ce_gppo_trl.rewards import math_accuracy_reward
from ce_gppo_trl.word_problems import BUILTIN_WORD_PROBLEMS, EXAMPLE, HELDOUT_SIZE, keeps_format, make_word_problems


def test_held_out_split_is_fixed_and_disjoint_in_questions_and_sums():
    train, test = make_word_problems("train"), make_word_problems("test")
    assert len(test) == HELDOUT_SIZE == 256 and len(train) == 34_048
    assert len(set(train["question"])) == len(train) and len(set(test["question"])) == len(test)
    assert not set(train["question"]) & set(test["question"])
    assert not set(train["expression"]) & set(test["expression"])
    assert len(set(test["expression"])) == 256
    assert make_word_problems("test")["question"] == test["question"]  # the same split in every process and run
    for row in test.select(range(20)):
        assert row["prompt"][:2] == list(EXAMPLE) and row["prompt"][2]["content"] == row["question"]
        assert int(row["solution"]) == eval(row["expression"]) >= 0  # noqa: S307


def test_loaded_through_load_math_dataset_by_name():
    ds = load_math_dataset(BUILTIN_WORD_PROBLEMS, split="test", num_examples=3)
    assert ds.column_names[:3] == ["prompt", "solution", "question"] and len(ds) == 3
    with pytest.raises(ValueError, match="split='validation' is not allowed"):
        make_word_problems("validation")
    with pytest.raises(ValueError, match="num_examples=300 is not allowed"):
        make_word_problems("test", 300)


def test_format_and_reward_read_the_answer_line():
    right, wrong, unformatted = "13 + 16 = 29. The answer is 29.", "The answer is 30.", "Anna has 29 marbles."
    assert [keeps_format(t) for t in (right, wrong, unformatted)] == [True, True, False]
    assert math_accuracy_reward([right, wrong, unformatted], ["29"] * 3) == [1.0, 0.0, 0.0]
