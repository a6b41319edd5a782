r"""Math datasets as `prompt` / `solution` rows for `GRPOTrainer` and `ce-gppo eval`.

`load_math_dataset` loads a hub id, a benchmark name (`AIME24`, `MATH-500`, ...), a local JSONL / JSON / Parquet /
CSV file, `builtin:arithmetic` (the toy's task) or `builtin:word-problems` (the real model's task,
`ce_gppo_trl.word_problems`), then an adapter picks the question and the gold answer out of the dataset's own
layout (verl rows, MATH, GSM8K, competition sets) and reduces the gold to the bare answer (`#### 72` -> `72`, a
worked solution -> its last `\boxed{}`, or all the boxes of an answer in several parts: `\(\boxed{1}\) and
\(\boxed{-2}\)` -> `1, -2`; see `ce_gppo_trl.rewards.extract_gold_answer`). The prompt is the question plus an
instruction, as a one-message conversation so that TRL renders it with the model's chat template.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, concatenate_datasets, load_dataset

from .rewards import extract_gold_answer
from .word_problems import BUILTIN_WORD_PROBLEMS, make_word_problems

__all__ = [
    "ADAPTERS",
    "BUILTIN_ARITHMETIC",
    "BUILTIN_WORD_PROBLEMS",
    "DAPO_TEMPLATE",
    "DATASETS",
    "DEFAULT_INSTRUCTION",
    "DatasetSpec",
    "build_prompt",
    "load_math_dataset",
]

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# DAPO-Math-17k's own prompt (T_DAPO). An instruction containing `{problem}` is a template, not a suffix.
DAPO_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
BUILTIN_ARITHMETIC = "builtin:arithmetic"
_DAPO_PREFIX, _DAPO_SUFFIX = DAPO_TEMPLATE.split("{problem}")
_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _message_text(prompt: Any) -> str:
    """The question inside a verl / TRL `prompt`: a string, or the content of the last user message."""
    if isinstance(prompt, str):
        return prompt
    user_messages = [message for message in prompt if message.get("role") == "user"]
    return (user_messages or prompt)[-1]["content"]


def _strip_dapo_template(question: str) -> str:
    if question.startswith(_DAPO_PREFIX) and question.endswith(_DAPO_SUFFIX):
        return question[len(_DAPO_PREFIX) : len(question) - len(_DAPO_SUFFIX)]
    return question


@dataclass(frozen=True)
class _Adapter:
    """Where an adapter finds the question and the gold: the first present column of each tuple."""

    question_columns: tuple[str, ...]
    answer_columns: tuple[str, ...]
    question: Callable[[Any], str] = str
    answer: Callable[[Any], Any] = lambda value: value


def _verl_question(prompt: Any) -> str:
    return _strip_dapo_template(_message_text(prompt))


def _verl_answer(reward_model: Any) -> Any:
    return reward_model["ground_truth"]


ADAPTERS: dict[str, _Adapter] = {
    # verl RLHFDataset rows (DAPO-Math-17k, KlearReasoner-MathSub-30K, CE-GPPO/ERC aime960 files); DAPO's T_DAPO
    # wrapper is removed so that the configured instruction is the only one.
    "verl": _Adapter(("prompt",), ("reward_model",), _verl_question, _verl_answer),
    # MATH-500 has `answer`; full MATH only a worked `solution`, reduced to its last \boxed{}.
    "math": _Adapter(("problem",), ("answer", "solution")),
    "gsm8k": _Adapter(("question",), ("answer",)),
    # AIME / AMC / HMMT hub layouts: HuggingFaceH4/aime_2024, Maxwell-Jia/AIME_2024, opencompass/AIME2025,
    # math-ai/amc23, MathArena/hmmt_feb_2025.
    "competition": _Adapter(("problem", "Problem", "question"), ("answer", "Answer")),
    # TRL / open-r1 layout (trl-lib/DeepMath-103K, open-r1/DAPO-Math-17k-Processed): `prompt` and `solution`.
    "prompt_solution": _Adapter(("prompt",), ("solution",), _message_text),
}
"""Adapter name -> the columns it reads. Use `question_column=` / `answer_column=` for any other layout."""


@dataclass(frozen=True)
class DatasetSpec:
    """A known dataset: hub id, configs (concatenated), default split, adapter, and whether to drop duplicates."""

    hub_id: str
    split: str
    adapter: str
    configs: tuple[str | None, ...] = (None,)
    deduplicate: bool = False


DATASETS: dict[str, DatasetSpec] = {
    "DAPO-Math-17k": DatasetSpec("BytedTsinghua-SIA/DAPO-Math-17k", "train", "verl", deduplicate=True),
    "KlearReasoner-MathSub-30K": DatasetSpec("Kwai-Klear/KlearReasoner-MathSub-30K", "train", "verl"),
    "DeepMath-103K": DatasetSpec("trl-lib/DeepMath-103K", "train", "prompt_solution"),
    "MATH": DatasetSpec("DigitalLearningGmbH/MATH-lighteval", "train", "math"),
    "MATH-500": DatasetSpec("HuggingFaceH4/MATH-500", "test", "math"),
    "GSM8K": DatasetSpec("openai/gsm8k", "test", "gsm8k", configs=("main",)),
    "AIME24": DatasetSpec("HuggingFaceH4/aime_2024", "train", "competition"),
    "AIME25": DatasetSpec("opencompass/AIME2025", "test", "competition", configs=("AIME2025-I", "AIME2025-II")),
    "HMMT25": DatasetSpec("MathArena/hmmt_feb_2025", "train", "competition"),
    "AMC23": DatasetSpec("math-ai/amc23", "test", "competition"),
}
"""Short names (case-insensitive; the hub ids work too) -> where and how to load them."""


def build_prompt(
    question: str, instruction: str | None = DEFAULT_INSTRUCTION, system_prompt: str | None = None
) -> list[dict[str, str]]:
    r"""One-turn conversation for `question`: the instruction is appended on a new line, or, if it contains
    `{problem}`, used as a template (see `DAPO_TEMPLATE`). `instruction=None` or `""` keeps the bare question (the
    Klear / CE-GPPO / ERC setup).

    Example:
        >>> build_prompt("1+1?", "Answer in \\boxed{}.")
        [{'role': 'user', 'content': '1+1?\nAnswer in \\boxed{}.'}]
    """
    if not instruction:
        content = question
    elif "{problem}" in instruction:
        content = instruction.replace("{problem}", question)
    else:
        content = f"{question}\n{instruction}"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": content}]


def _find_spec(name_or_path: str) -> DatasetSpec | None:
    lowered = name_or_path.lower()
    for name, spec in DATASETS.items():
        if lowered in (name.lower(), spec.hub_id.lower()):
            return spec
    return None


def _load_raw(name_or_path: str, split: str | None, config_name: str | None, spec: DatasetSpec | None) -> Dataset:
    if os.path.isfile(name_or_path):
        extension = os.path.splitext(name_or_path)[1].lower()
        if extension not in _LOCAL_BUILDERS:
            raise ValueError(
                f"dataset file {name_or_path!r} has extension {extension!r}; allowed: {sorted(_LOCAL_BUILDERS)}"
            )
        return load_dataset(_LOCAL_BUILDERS[extension], data_files=name_or_path, split=split or "train")
    if spec is not None:
        configs = (config_name,) if config_name else spec.configs
        parts = [load_dataset(spec.hub_id, config, split=split or spec.split) for config in configs]
        return parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    return load_dataset(name_or_path, config_name, split=split or "train")


def _detect_adapter(columns: list[str]) -> str | None:
    for name, adapter in ADAPTERS.items():
        if _first_present(adapter.question_columns, columns) and _first_present(adapter.answer_columns, columns):
            return name
    return None


def _first_present(candidates: tuple[str, ...], columns: list[str]) -> str | None:
    return next((column for column in candidates if column in columns), None)


def load_math_dataset(
    name_or_path: str,
    *,
    split: str | None = None,
    config_name: str | None = None,
    adapter: str | None = None,
    question_column: str | None = None,
    answer_column: str | None = None,
    instruction: str | None = DEFAULT_INSTRUCTION,
    system_prompt: str | None = None,
    conversational: bool = True,
    num_examples: int | None = None,
    deduplicate: bool | None = None,
    seed: int = 0,
) -> Dataset:
    r"""Load a math dataset as `prompt` and `solution` columns (plus `question`, the bare problem).

    Args:
        name_or_path: a name from `DATASETS` (`"AIME24"`, `"MATH-500"`, `"DAPO-Math-17k"`, ...), any hub id, a
            local `.jsonl` / `.json` / `.parquet` / `.csv` file, or `"builtin:arithmetic"` (the offline toy task of
            `ce_gppo_trl.toy`, returned as is: plain prompts like `"49+97="`), or `"builtin:word-problems"`
            (`ce_gppo_trl.word_problems`: split "train" or "test", the default, as a benchmark's own split is its
            evaluation one; chats with a worked example; the instruction and
            adapter fields do not apply to either builtin).
        split: dataset split; defaults to the known dataset's split, else `"train"` (local files have only that).
        config_name: hub config (e.g. `"main"` for GSM8K); overrides a known dataset's configs.
        adapter: a name from `ADAPTERS` ("verl", "math", "gsm8k", "competition", "prompt_solution"); detected from
            the columns when omitted.
        question_column / answer_column: read these columns instead of an adapter (both needed).
        instruction: appended to each question, or a template with `{problem}`; None or "" for the bare question.
        system_prompt: an optional system message placed before the question.
        conversational: `prompt` as `[{"role": "user", "content": ...}]` (TRL applies the chat template) when True,
            as the plain string when False (models without a chat template; then `system_prompt` is not allowed).
        num_examples: keep only the first N rows (after de-duplication); N examples for the builtin task.
        deduplicate: drop rows whose question repeats (DAPO-Math-17k repeats each problem ~100 times and defaults
            to True; others default to False).
        seed: seed of the builtin task.

    Raises:
        ValueError: unknown adapter, unsupported file type, or the needed columns are missing (the error names the
            dataset and the columns it has).

    Example:
        >>> ds = load_math_dataset("tests/fixtures/gsm8k.jsonl")  # doctest: +SKIP
        >>> ds[0]["solution"]  # doctest: +SKIP
        '72'
    """
    if num_examples is not None and num_examples <= 0:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    if name_or_path == BUILTIN_ARITHMETIC:
        from .toy import make_arithmetic_dataset  # the toy module pulls in torch and transformers

        return make_arithmetic_dataset(num_examples or 1000, seed)
    if name_or_path == BUILTIN_WORD_PROBLEMS:
        return make_word_problems(split or "test", num_examples)  # a benchmark's own split: its held-out one
    if adapter is not None and adapter not in ADAPTERS:
        raise ValueError(f"adapter {adapter!r} is unknown; allowed adapters are {sorted(ADAPTERS)}")
    if (question_column is None) != (answer_column is None):
        raise ValueError(
            f"question_column ({question_column!r}) and answer_column ({answer_column!r}) must be given together"
        )
    if not conversational and system_prompt:
        raise ValueError("system_prompt needs conversational=True (a plain-string prompt has no system message)")

    spec = None if os.path.isfile(name_or_path) else _find_spec(name_or_path)
    raw = _load_raw(name_or_path, split, config_name, spec)
    columns = list(raw.column_names)
    if question_column is not None:
        chosen = _Adapter((question_column,), (answer_column,), _message_text)
        needed = f"question_column={question_column!r} and answer_column={answer_column!r}"
    else:
        adapter = adapter or (spec.adapter if spec else None) or _detect_adapter(columns)
        if adapter is None:
            raise ValueError(
                f"dataset {name_or_path!r} has columns {columns}, which no adapter recognises; pass "
                f"question_column= and answer_column=, or an adapter from {sorted(ADAPTERS)}"
            )
        chosen = ADAPTERS[adapter]
        needed = f"adapter {adapter!r} needs one of {list(chosen.question_columns)} and one of "
        needed += f"{list(chosen.answer_columns)}"
    question_key = _first_present(chosen.question_columns, columns)
    answer_key = _first_present(chosen.answer_columns, columns)
    if question_key is None or answer_key is None:
        raise ValueError(f"dataset {name_or_path!r} has columns {columns}; {needed}")

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        question = chosen.question(row[question_key])
        prompt = build_prompt(question, instruction, system_prompt)
        gold = chosen.answer(row[answer_key])
        return {
            "prompt": prompt if conversational else prompt[-1]["content"],
            "solution": extract_gold_answer(gold if isinstance(gold, str | int | float) else str(gold)),
            "question": question,
        }

    if deduplicate if deduplicate is not None else (spec is not None and spec.deduplicate):
        seen: set[str] = set()
        keep = []
        for index, value in enumerate(raw[question_key]):
            key = chosen.question(value)
            if key not in seen:
                seen.add(key)
                keep.append(index)
        raw = raw.select(keep)
    if num_examples is not None:
        raw = raw.select(range(min(num_examples, len(raw))))
    converted = raw.map(convert, remove_columns=columns, desc=f"Preparing {name_or_path}")
    return converted.select_columns(["prompt", "solution", "question"])
