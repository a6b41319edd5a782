import json
from pathlib import Path

import pytest

from ce_gppo_trl.data import DAPO_TEMPLATE, DEFAULT_INSTRUCTION, build_prompt, load_math_dataset
from ce_gppo_trl.rewards import math_accuracy_reward

FIXTURES = Path(__file__).parent / "fixtures"

# file, adapter detected from the columns, golds after reduction, start of the first question
CASES = [
    ("dapo-math-17k.parquet", ["34", "-3", "34", "-3", "34", "-3"], "In triangle $ABC$"),
    ("train_math_30K.json", ["4", r"\frac12"], "Let $n=9867$."),
    ("aime960_math_verify.json", ["540"], "Find the largest possible real part"),
    ("math500_test.jsonl", [r"\left( 3, \frac{\pi}{2} \right)", "(1,2)"], "Convert the point"),
    ("math_lighteval.jsonl", [r"\frac{3}{4}"], r"What is $\frac{1}{2}"),
    ("gsm8k_test.parquet", ["72", "1234"], "Natalia sold clips"),
    ("aime_2024_h4.jsonl", ["204"], "Every morning Aya"),
    ("aime_2024_problems.parquet", ["33"], "Let $x,y$ and $z$"),
    ("aime2025-I.jsonl", ["70"], "Find the sum of all integer bases"),
    ("amc23_test.parquet", ["27"], "Cities $A$ and $B$"),
    ("hmmt_feb_2025.parquet", ["103"], "Compute the sum of the positive divisors"),
    ("deepmath.jsonl", [r"\frac{1}{2}"], r"Evaluate $\int_0^1"),
]


@pytest.mark.parametrize("filename, golds, question_start", CASES)
def test_adapters_on_real_formats(filename, golds, question_start):
    dataset = load_math_dataset(str(FIXTURES / filename))
    assert dataset.column_names == ["prompt", "solution", "question"]
    assert dataset["solution"] == golds
    first = dataset[0]
    assert first["question"].startswith(question_start)
    assert first["prompt"] == [{"role": "user", "content": first["question"] + "\n" + DEFAULT_INSTRUCTION}]
    # Golds stay scorable: the gold itself, boxed, earns the full reward.
    assert math_accuracy_reward([rf"\boxed{{{gold}}}" for gold in golds], golds) == [1.0] * len(golds)


def test_dapo_template_is_stripped_and_rebuilt_and_duplicates_dropped():
    path = str(FIXTURES / "dapo-math-17k.parquet")
    dataset = load_math_dataset(path, instruction=DAPO_TEMPLATE, deduplicate=True)
    assert dataset["solution"] == ["34", "-3"]
    assert dataset[1]["prompt"][0]["content"] == DAPO_TEMPLATE.replace("{problem}", "Compute $1 - 4$.")
    assert "Solve the following" not in dataset[1]["question"]


def test_explicit_adapter_and_plain_prompts_and_num_examples():
    path = str(FIXTURES / "math500_test.jsonl")
    dataset = load_math_dataset(path, adapter="math", conversational=False, instruction=None, num_examples=1)
    assert len(dataset) == 1
    assert dataset[0]["prompt"] == dataset[0]["question"]


def test_generic_column_mapping_on_csv():
    dataset = load_math_dataset(
        str(FIXTURES / "custom.csv"), question_column="query", answer_column="target", system_prompt="Be brief."
    )
    assert dataset["solution"] == ["42", "1024"]
    assert dataset[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert dataset[0]["prompt"][1]["content"].startswith("What is 6 times 7?\n")


def test_missing_columns_name_the_dataset_and_its_columns():
    path = str(FIXTURES / "custom.csv")
    with pytest.raises(ValueError, match=r"custom\.csv' has columns \['id', 'query', 'target'\], which no adapter"):
        load_math_dataset(path)
    with pytest.raises(ValueError, match=r"has columns \['id', 'query', 'target'\]; adapter 'gsm8k' needs"):
        load_math_dataset(path, adapter="gsm8k")
    with pytest.raises(ValueError, match=r"question_column='question' and answer_column='target'"):
        load_math_dataset(path, question_column="question", answer_column="target")
    with pytest.raises(ValueError, match=r"adapter 'nope' is unknown; allowed adapters are \["):
        load_math_dataset(path, adapter="nope")
    with pytest.raises(ValueError, match="must be given together"):
        load_math_dataset(path, question_column="query")


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("1+1")
    with pytest.raises(ValueError, match=r"extension '\.txt'; allowed: \['\.csv', '\.json', '\.jsonl', '\.parquet'\]"):
        load_math_dataset(str(path))


def test_build_prompt_template_and_suffix():
    assert build_prompt("Q", "Think.") == [{"role": "user", "content": "Q\nThink."}]
    assert build_prompt("Q", "Problem:\n{problem}\nGo.")[0]["content"] == "Problem:\nQ\nGo."
    assert build_prompt("Q", None) == [{"role": "user", "content": "Q"}]


def test_builtin_arithmetic():
    dataset = load_math_dataset("builtin:arithmetic", num_examples=5, seed=3)
    assert len(dataset) == 5
    assert {"prompt", "solution"} <= set(dataset.column_names)
    first = dataset[0]
    assert math_accuracy_reward([rf"\boxed{{{first['solution']}}}"], [first["solution"]]) == [1.0]
    assert eval(first["prompt"].rstrip("=")) == int(first["solution"])  # noqa: S307 - "a+b" from the toy task


def test_multi_box_gold_is_kept_whole_at_load_time(tmp_path):
    # NuminaMath / OpenThoughts-style worked solutions that box each part of the answer.
    rows = [
        {"problem": "Find all integers n with f(n) = n.", "solution": r"so $n = \boxed{1}$ and $n = \boxed{-2}$."},
        {"problem": "Solve for k and n.", "solution": r"$$\boxed{k = 45} \quad \text{and} \quad \boxed{n = 2}$$"},
        {
            "problem": "Compute x.",
            "solution": r"First $y = \boxed{3}$. After much more work we find " + "that " * 20 + r"$x = \boxed{5}$.",
        },
    ]
    path = tmp_path / "numina.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    dataset = load_math_dataset(str(path))
    assert dataset["solution"] == ["1, -2", "k = 45, n = 2", "5"]
    completions = [r"\boxed{-2, 1}", r"\boxed{-2}", r"\boxed{n = 2, k = 45}", r"\boxed{n = 2}", r"\boxed{5}"]
    golds = [dataset["solution"][i] for i in (0, 0, 1, 1, 2)]
    assert math_accuracy_reward(completions, golds) == [1.0, 0.0, 1.0, 0.0, 1.0]
