"""One-step arithmetic word problems: the offline task on which SmolLM2-135M-Instruct has room to learn.

`make_word_problems` enumerates every problem of a small grammar (a name, an item, an action that adds or takes
away, two numbers from 2 to 20) and splits it once, with a fixed seed, by its arithmetic: half of the 532 expressions
("13 + 16") are held out with all their wordings, and the `test` split is `HELDOUT_SIZE` problems, one for each of 256
of them, so that neither a test question nor its sum is ever trained on; `train` holds the 34,048 problems of the
other half. Each prompt is a chat with one worked example before the question, so that an instruct model answers in
the form the reward reads anchored, "... The answer is 12." (`ce_gppo_trl.rewards.math_accuracy_reward`:
math-verify's "answer is" anchor).

Why this task (probes on the converted model at temperature 1, 32-64 problems each; RESULTS section 12): bare sums
asked for a `\\boxed{}` answer were right 0-6% of the time (the model rarely writes a box); with the worked example,
bare sums of 2..20 gave 16%, additions-only word problems 12% (22% greedy). This grammar's held-out split starts at
7.8% +- 1.2% (2 samples of each of the 256 problems), with the answer line kept 35% of the time.

Example:
    >>> ds = make_word_problems("test")
    >>> len(ds), ds[0]["solution"] == str(eval(ds[0]["expression"]))
    (256, True)
"""

from __future__ import annotations

import itertools
import random
import re

from datasets import Dataset

BUILTIN_WORD_PROBLEMS = "builtin:word-problems"
"""`dataset_name` of this task in recipes and `ce-gppo eval --dataset`."""

HELDOUT_SIZE = 256
HELDOUT_EXPRESSION_SHARE = 2  # one expression ("13 + 16") in this many is held out, with all its wordings
SEED = 0
NAMES = ("Anna", "Ben", "Lily", "Sam", "Mia", "Jack", "Emma", "Leo")
ITEMS = ("apples", "books", "coins", "pencils", "stickers", "marbles", "cookies", "cards")
NUMBERS = range(2, 21)
# (sentence, operator): the question's second sentence and how it changes the count.
ACTIONS = (
    ("{name} gets {b} more.", "+"),
    ("{name} buys {b} more.", "+"),
    ("{name} gives away {b}.", "-"),
    ("{name} loses {b}.", "-"),
)
EXAMPLE = (
    {"role": "user", "content": "Tom has 3 apples. Tom gets 4 more. How many apples does Tom have now?"},
    {"role": "assistant", "content": "3 + 4 = 7. The answer is 7."},
)
"""The worked example every prompt starts with (its numbers are outside the problems' grammar: Tom is no name)."""

ANSWER_LINE = re.compile(r"the answer is\s*\$?-?\d", re.IGNORECASE)
"""What counts as keeping the format: an anchored final answer that starts with a number."""


def _splits() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test): every problem of the grammar, split by its arithmetic so that the test sums are new too."""
    problems: dict[str, list[str]] = {}
    for name, item, (action, op), a, b in itertools.product(NAMES, ITEMS, ACTIONS, NUMBERS, NUMBERS):
        if op == "-" and b >= a:
            continue  # no negative counts
        question = f"{name} has {a} {item}. {action.format(name=name, b=b)} How many {item} does {name} have now?"
        problems.setdefault(f"{a} {op} {b}", []).append(question)
    rng = random.Random(SEED)
    expressions = sorted(problems)
    rng.shuffle(expressions)
    held_out = expressions[: len(expressions) // HELDOUT_EXPRESSION_SHARE]
    test = [(rng.choice(problems[expression]), expression) for expression in held_out]
    test = test[:HELDOUT_SIZE]  # 266 held-out expressions: each test problem has its own
    train = [(q, e) for e in expressions[len(held_out) :] for q in problems[e]]
    rng.shuffle(train)
    return train, test


def make_word_problems(split: str = "train", num_examples: int | None = None) -> Dataset:
    """The `train` or `test` split as `prompt` (a chat: the worked example, then the question), `solution`,
    `question` and `expression` columns. The split is fixed: no test question occurs in `train`.

    Raises:
        ValueError: `split` is not "train" or "test", or `num_examples` exceeds the split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not allowed for {BUILTIN_WORD_PROBLEMS}: use 'train' or 'test'")
    train, test = _splits()
    rows = test if split == "test" else train
    if num_examples is not None:
        if num_examples > len(rows):
            raise ValueError(
                f"num_examples={num_examples} is not allowed for {BUILTIN_WORD_PROBLEMS} split {split!r}: it has "
                f"{len(rows)} problems"
            )
        rows = rows[:num_examples]
    return Dataset.from_dict(
        {
            "prompt": [[*EXAMPLE, {"role": "user", "content": question}] for question, _ in rows],
            "solution": [str(eval(expression)) for _, expression in rows],  # noqa: S307 - "a op b" of two ints
            "question": [question for question, _ in rows],
            "expression": [expression for _, expression in rows],
        }
    )


def keeps_format(completion: str) -> bool:
    """Whether `completion` states its answer in the task's form ("The answer is N"), right or wrong."""
    return ANSWER_LINE.search(completion) is not None
