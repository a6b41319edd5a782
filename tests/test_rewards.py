import json
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def test_multi_box_gold_keeps_every_box_of_its_answer():
    assert extract_gold_answer(r"\(\boxed{1}\) and \(\boxed{-2}\).") == "1, -2"
    assert extract_gold_answer(r"$$\boxed{2}, \boxed{3}, \boxed{5}$$") == "2, 3, 5"
    # Boxes far apart, or apart by more than a separator, are not one answer: the last box is.
    assert extract_gold_answer(r"\boxed{1} no no no no no \boxed{2}") == "2"
    assert extract_gold_answer(r"\boxed{1} and and and or thus but \boxed{2} and \boxed{3}") == "2, 3"
    assert extract_gold_answer(r"so $x = \boxed{3}$. Hence the area is " + "large " * 20 + r"$\boxed{5}$.") == "5"


# Every false positive found while checking the reward against the peer suites, as (completion, gold); all score 0.
FALSE_POSITIVES_FOUND = [
    # the integer shortcut removed spaces, then commas: a list read as one number
    (r"is $\boxed{32, 349}$", r" So the answer is: \[ \boxed{32349} \]"),  # Math-Verify test_all.py
    (r"\boxed{1, 2}", "12"),
    (r"\boxed{1,2,3}", "123"),
    (r"\boxed{1,23}", "123"),  # not a real grouping (groups after the first have 3 digits)
    # multi-box golds were cut to their last box, so a partial answer matched
    (r"\boxed{-2}", r"\(\boxed{1}\) and \(\boxed{-2}\)."),  # Math-Verify test_numina_cases.py
    (r"$\boxed{1,2,3}$", r"\boxed{1} and and and or thus but \boxed{2} and \boxed{3}"),  # lighteval numina cases
    # found while writing the fix: an answer line read as prose would keep only one root of a hedge
    ("Answer: x = 5 or x = -3", "5"),
    # math-verify reads `1 000` in a box as 1*000 = 0
    (r"\boxed{1 000}", "0"),
    # unboxed anchored answers naming several values: math-verify keeps the first (or reads `1,2` as 1.2)
    ("The answer is 3 or 4.", "3"),
    ("Final Answer: The final answer is 3, 4. I hope it is correct.", "3"),
    ("so the answer is either 3 or 4", "3"),
    ("The answer is 1, 5", "1"),
    ("The answer is 1,2,3", "1.2"),
    # found by mutating the peer golds (benchmarks/reward_agreement.py --mutations): latex2sympy read these lists
    # as their first item, so a wrong or missing second root still verified
    (r"\boxed{x = \frac{1}{2}, x = \frac{-1 \pm \sqrt{13}}{4}}", r"x = \frac{1}{2}, x = \frac{-1 \pm \sqrt{13}}{5}"),
    (r"\boxed{x = \frac{1}{2}}", r"x = \frac{1}{2}, x = \frac{-1 \pm \sqrt{13}}{5}"),
    # found by probing boxes by hand: math-verify drops `\text{}` as a unit, numbers and all
    (r"\boxed{3 \text{ (or 4)}}", "3"),
    (r"\boxed{3 \text{ apples}, 4 \text{ pears}}", "3"),
    # ... and a box earlier on the line of a prose answer line was scored instead of what the line says
    (r'$\boxed{12 $ and $13 }. $ Final Answer: The final answer is "$12 $ and $14 $". I hope', r"12\text{ and }13"),
]


@pytest.mark.parametrize("completion, gold", FALSE_POSITIVES_FOUND)
def test_false_positives_found_score_zero(completion, gold):
    assert math_accuracy_reward([completion], [gold]) == [0.0]
    assert MathAccuracyReward(incorrect=-1.0)([completion], [gold]) == [-1.0]


# Clearly stated answers that the reward used to miss, and thousands separators that are real groupings.
STATED_ANSWERS = [
    ("Final Answer: The final answer is 7.78.", "7.78"),
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("Final Answer: The final answer is $28 \\%$. I hope it is correct.", r"28\%"),
    (r"\boxed{255} so far. Final Answer: The final answer is $10,455$. I hope it is correct.", "10455"),
    (r"$\boxed{1}\boxed{2}$", r"\{1,2\}"),
    (r"$$\boxed{k = 45} \quad \text{and} \quad \boxed{n = 2}$$", "k = 45, n = 2"),
    (r"\[ \boxed{-2} \quad \text{and} \quad \boxed{1}. \]", r"so the solutions are $n = \boxed{1,-2}.$"),
    (r"$\boxed{-2,1}$.", r"\(\boxed{1}\) and \(\boxed{-2}\)."),
    (r"\boxed{(1, 2)}, \boxed{(2, 1)}", "$(2,1),(1,2)$"),
    ("Answer: x = 5 or x = -3", "5, -3"),
    (r"\boxed{1,234}", "1234"),
    (r"is $\boxed{32,\! 349}$", "32349"),
    (r"\boxed{1{,}000}", "1000"),
    (r"\boxed{1\,000}", "1000"),
    (r"\boxed{7,425,000}", "7425000"),
    (r"\boxed{1,234.5}", "1234.5"),
    ("The answer is 12,000,023.", "12000023"),
    (r"Final Answer: The final answer is \((-6, 10)\). I hope it is correct.", "(-6, 10)"),
    ("The answer is $3$ or $4$.", "3, 4"),
    ("The answer is 5, since 2 + 3 = 5.", "5"),
    (r"\boxed{x = \frac{1}{2}, x = \frac{-1 \pm \sqrt{13}}{5}}", r"x = \frac{1}{2}, x = \frac{-1 \pm \sqrt{13}}{5}"),
    (r'$\boxed{12 $ and $13 }. $ Final Answer: The final answer is "$12 $ and $13 $". I hope', r"12\text{ and }13"),
    (r"\boxed{a=4,\,-8,\,-10}", "-10,-8,4"),
    (r"\boxed{\$1,234}", "1234"),
    (r"\boxed{3 \text{ apples}}", "3"),
    (r"\boxed{125\textnormal{ miles}}", "125"),
]


@pytest.mark.parametrize("completion, gold", STATED_ANSWERS)
def test_stated_answers_and_real_thousands_groupings_score_one(completion, gold):
    assert math_accuracy_reward([completion], [gold]) == [1.0]


def test_one_part_gold_scores_the_last_box_and_many_candidates_never_pay():
    # Against a one-part gold only the last box counts, so boxing several candidates earns no more than boxing one.
    assert math_accuracy_reward([r"\boxed{1} or \boxed{2}", r"\boxed{2} or \boxed{1}"], ["2", "2"]) == [1.0, 0.0]
    # Against a multi-part gold the run of boxes is one answer: extra or missing parts are wrong.
    completions = [r"\boxed{1} or \boxed{2}", r"\boxed{1}, \boxed{2}, \boxed{3}", r"\boxed{2}"]
    assert math_accuracy_reward(completions, ["1, 2"] * 3) == [1.0, 0.0, 0.0]


def test_gold_column_solution_or_answer():
    completions = [r"\boxed{7}", r"\boxed{8}"]
    # TRL passes every dataset column, and its own arguments, as keywords.
    trl_style = {"prompts": ["a", "b"], "completion_ids": [[1], [2]], "trainer_state": None}
    assert math_accuracy_reward(completions=completions, answer=["7", "7"], **trl_style) == [1.0, 0.0]
    assert math_accuracy_reward(completions=completions, solution=["8", "8"], **trl_style) == [0.0, 1.0]
    assert MathAccuracyReward(incorrect=-1.0)(completions, answer=["#### 7", "#### 7"]) == [1.0, -1.0]
    # Both present (raw MATH-500 rows): `solution` is this project's column and wins.
    assert math_accuracy_reward(completions, solution=["7", "7"], answer=["8", "8"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"column named 'solution' or 'answer'.*\['completion_ids', 'prompts'"):
        math_accuracy_reward(completions=completions, **trl_style)
    assert math_accuracy_reward([r"\boxed{7}"], [None]) == [0.0]  # a row without a gold scores as wrong


PEER_CASES = [json.loads(line) for line in open(Path(__file__).parent / "data" / "reward_peer_cases.jsonl")]


def test_peer_suites_no_false_positive_and_anchored_agreement():
    """Cases from Math-Verify, lighteval, TRL, open-r1 and AReaL tests (tests/data/README.md)."""
    scores = math_accuracy_reward([case["completion"] for case in PEER_CASES], [case["gold"] for case in PEER_CASES])
    scored = list(zip(PEER_CASES, scores, strict=True))
    assert [case["id"] for case, score in scored if score == 1.0 and not case["expected"]] == []  # false positives
    anchored = [(case, score) for case, score in scored if case["form"] in ("boxed", "answer_line")]
    agreement = sum(score == case["expected"] for case, score in anchored) / len(anchored)
    assert len(anchored) >= 120 and agreement >= 0.95


def test_peer_multi_part_cases_score_the_same_from_a_thread_and_signed():
    # The worker processes load rewards.py alone; the new box and number handling must work there too.
    cases = [case for case in PEER_CASES if case["form"] == "boxed" and "," in case["gold"]][:20]
    completions, golds = [case["completion"] for case in cases], [case["gold"] for case in cases]
    main_thread = math_accuracy_reward(completions, golds)
    with ThreadPoolExecutor(max_workers=1) as pool:
        from_thread = pool.submit(math_accuracy_reward, completions, golds).result()
    signed = MathAccuracyReward(incorrect=-1.0)(completions, golds)
    assert len(cases) == 20 and sum(main_thread) >= 10
    assert from_thread == main_thread
    assert signed == [2.0 * score - 1.0 for score in main_thread]


HOSTILE = [
    r"\boxed{2^{3^{4^{5}}}}",  # sympy would evaluate this for ever
    r"\boxed{(10^{9})!}",
    "x" * 200_000,
    r"\boxed{" * 50_000,
    "{" * 5000 + "1" + "}" * 5000,
    r"\boxed{\frac{\frac{\sqrt{",
    r"\boxed{" + "1" * 300_000 + "}",
    "\\boxed{\x00\ud800}",
    r"\boxed{1}, " * 2000,  # one long run of repeated boxes
    "".join(rf"\boxed{{{i}}}" for i in range(2000)),  # one long run of distinct boxes
    "Answer: " + "$" * 3000,
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


def test_hostile_runs_of_boxes_against_a_multi_part_gold_and_as_golds():
    many = "".join(rf"\boxed{{{i}}}" for i in range(2000))
    assert math_accuracy_reward([r"\boxed{1}, " * 2000, many, r"\boxed{1}\boxed{2}"], ["1, 2"] * 3) == [0.0, 0.0, 1.0]
    # Gold runs are read right to left, each box once: a 100k-box gold is read in linear time.
    assert extract_gold_answer(r"\boxed{1}" * 100_000) == "1"
    assert extract_gold_answer(r"\boxed{" * 50_000 + r"\boxed{2}") == "2"


def test_hostile_input_in_main_thread_is_bounded():
    start = time.perf_counter()
    assert MathAccuracyReward(timeout_seconds=0.5)([r"\boxed{2^{3^{4^{5}}}}"], ["7"]) == [0.0]
    assert time.perf_counter() - start < 2.0


def test_format_reward():
    completions = [r"<think>hmm</think> so \boxed{4}", "Answer: 5", "I think it is 4", r"\boxed{4"]
    assert format_reward(completions) == [1.0, 1.0, 0.0, 0.0]
    assert format_reward(["Final Answer: The final answer is 7.78.", "so\n#### 5"]) == [1.0, 1.0]
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
