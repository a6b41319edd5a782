import pickle
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ce_gppo_trl.rewards import (
    REWARD_FUNCS,
    MathAccuracyReward,
    extract_final_answer,
    extract_gold_answer,
    format_reward,
    get_reward_funcs,
    math_accuracy_reward,
)

# (completion answer, gold as datasets store it, equivalent?)
PAIRS = [
    (r"\boxed{0.5}", r"\frac12", True),
    (r"\boxed{\dfrac{1}{2}}", r"\frac12", True),
    (r"\boxed{\frac{1}{3}}", r"\frac12", False),
    (r"\boxed{(1, 2]}", "(1,2]", True),
    (r"\boxed{[1,2]}", "(1,2]", False),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
    (r"\boxed{x^2+1}", "(x+1)^2", False),
    (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{73}", "073", True),
    (r"\boxed{540}", "540", True),
    (r"\boxed{-3}", "3", False),
    (r"\boxed{72}", "Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72", True),
    (r"\boxed{\frac{\pi}{2}}", r"so $\theta = \boxed{\frac{\pi}{2}}$.", True),
]


@pytest.mark.parametrize("answer, gold, equivalent", PAIRS)
def test_equivalent_and_different_answers_plain_and_chat(answer, gold, equivalent):
    plain = f"We compute carefully. The answer is {answer}"
    chat = [{"role": "assistant", "content": plain}]
    expected = [1.0 if equivalent else 0.0] * 2
    assert math_accuracy_reward([plain, chat], [gold, gold]) == expected


def test_toy_task_completions():
    assert math_accuracy_reward([r"\boxed{7}", r"\boxed{8}", "\\boxed{7}<|endoftext|>"], ["7", "7", "7"]) == [
        1.0,
        0.0,
        1.0,
    ]


def test_toy_task_is_fast():
    completions = [rf"\boxed{{{i % 10}}}" for i in range(4000)]
    solutions = [str(i % 7) for i in range(4000)]
    start = time.perf_counter()
    rewards = math_accuracy_reward(completions, solutions)
    assert time.perf_counter() - start < 1.0
    assert sum(rewards) == sum(1 for i in range(4000) if i % 10 == i % 7)


def test_reasoning_text_after_last_think_is_scored():
    completion = r"<think>maybe \boxed{3}? no.</think> The answer is \boxed{4}"
    assert math_accuracy_reward([completion, r"<think>\boxed{4}</think> I give up"], ["4", "4"]) == [1.0, 0.0]


def test_dapo_answer_line_and_gsm8k_marker():
    dapo = "Step 1 ...\nStep 2 ...\nAnswer: 34"
    assert math_accuracy_reward([dapo, "Answer: $35$", "so\n#### 1,234"], ["34", "34", "1234"]) == [1.0, 0.0, 1.0]


def test_anchored_answer_without_box():
    assert math_accuracy_reward(["The final answer is $\\frac{1}{2}$.", "I like 7 and 1/2"], ["0.5", "0.5"]) == [
        1.0,
        0.0,
    ]


def test_signed_scale():
    signed = get_reward_funcs(["math_accuracy"], scale="signed")[0]
    assert signed([r"\boxed{7}", r"\boxed{8}", "no answer"], ["7", "7", "7"]) == [1.0, -1.0, -1.0]
    assert MathAccuracyReward(incorrect=-1.0)([r"\boxed{2}"], ["1"]) == [-1.0]


def test_reward_is_picklable_and_named():
    reward = pickle.loads(pickle.dumps(MathAccuracyReward(incorrect=-1.0)))
    assert reward([r"\boxed{1}"], ["2"]) == [-1.0]
    assert reward.__name__ == "math_accuracy_reward"
    assert math_accuracy_reward.__name__ == "math_accuracy_reward"


def test_gold_extraction():
    assert extract_gold_answer("He pays 1,200 in total.\n#### 1,200") == "1200"
    assert extract_gold_answer(r"Thus $\boxed{\left( 3, \pi \right)}.$") == r"\left( 3, \pi \right)"
    assert extract_gold_answer("$\\frac{1}{2}$") == r"\frac{1}{2}"
    assert extract_gold_answer(40.0) == "40"
    assert extract_final_answer(r"\boxed{\frac{1}{2}") is not None  # unclosed box falls back to the text search


HOSTILE = [
    r"\boxed{2^{3^{4^{5}}}}",  # sympy would evaluate this for ever
    r"\boxed{(10^{9})!}",
    "x" * 200_000,
    r"\boxed{" * 50_000,
    "{" * 5000 + "1" + "}" * 5000,
    r"\boxed{\frac{\frac{\sqrt{",
    r"\boxed{" + "1" * 300_000 + "}",
    "\\boxed{\x00\ud800}",
]


def test_hostile_inputs_from_threads_are_bounded_and_score_zero(caplog):
    reward = MathAccuracyReward(timeout_seconds=1.0)
    batches = [[completion] for completion in HOSTILE] + [[r"\boxed{0.5}"]]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda batch: reward(batch, [r"\frac12"]), batches))
    elapsed = time.perf_counter() - start
    assert results == [[0.0]] * len(HOSTILE) + [[1.0]]
    # Worker start-up (~2 s on 2 cores) plus at most two 1-second timeouts per worker.
    assert elapsed < 30.0
    assert len(caplog.records) <= 1


def test_hostile_input_in_main_thread_is_bounded():
    start = time.perf_counter()
    assert MathAccuracyReward(timeout_seconds=0.5)([r"\boxed{2^{3^{4^{5}}}}"], ["7"]) == [0.0]
    assert time.perf_counter() - start < 2.0


def test_format_reward():
    completions = [r"<think>hmm</think> so \boxed{4}", "Answer: 5", "I think it is 4", r"\boxed{4"]
    assert format_reward(completions) == [1.0, 1.0, 0.0, 0.0]
    strict = get_reward_funcs(["format"], require_think=True)[0]
    assert strict([r"<think>hmm</think> \boxed{4}", r"\boxed{4}"]) == [1.0, 0.0]


def test_overlong_reward_is_dapo_shaping():
    overlong = get_reward_funcs(["overlong"], max_completion_length=100, overlong_buffer=20)[0]
    assert overlong(completion_ids=[[1] * 80, [1] * 90, [1] * 100, [1] * 101]) == [0.0, -0.5, -1.0, -1.0]
    default_buffer = get_reward_funcs(["overlong"], max_completion_length=100)[0]
    assert default_buffer(completion_ids=[[1] * 90]) == [-0.5]


def test_registry_and_errors():
    assert {"math_accuracy", "format", "overlong", "think_format"} <= set(REWARD_FUNCS)
    funcs = get_reward_funcs(["math_accuracy", "format", "think_format"])
    assert [f.__name__ for f in funcs] == ["math_accuracy_reward", "format_reward", "think_format_reward"]
    with pytest.raises(ValueError, match=r"unknown reward name\(s\) \['acc'\]; allowed names are \["):
        get_reward_funcs(["acc"])
    with pytest.raises(ValueError, match="max_completion_length"):
        get_reward_funcs(["overlong"])
    with pytest.raises(ValueError, match="scale must be one of"):
        get_reward_funcs(["math_accuracy"], scale="ternary")
    with pytest.raises(ValueError, match=r"\['max_completion_length'\] are not used"):
        get_reward_funcs(["math_accuracy"], max_completion_length=10)
    with pytest.raises(ValueError, match="2 completions but 1 gold answers"):
        math_accuracy_reward(["a", "b"], ["1"])
