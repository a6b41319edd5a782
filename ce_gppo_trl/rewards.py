r"""Reward functions for math RL, callable the way TRL's `GRPOTrainer` calls them.

Every reward takes `completions` (plain strings or chat messages) plus dataset columns as keyword arguments and
returns one float per completion. The accuracy reward follows the CE-GPPO / ERC verl setup: score the text after the
last `</think>`, take the last `\boxed{}` (or a DAPO-style `Answer: ...` line), and let math-verify decide whether it
equals the gold answer as datasets store it (raw LaTeX such as `\frac12`, `(1,2]`, `#### 72`, a full MATH solution).
What this module adds to math-verify is written to never pay a wrong answer: a list is never read as a number (only
real thousands groupings such as `1,234` are), a gold in several boxes is compared as the set of its boxes (a partial
answer scores 0), and boxing several candidates never earns more than boxing the last one.

Time per completion is bounded: in the main thread by a `SIGALRM` timer around parse and verify; in any other
thread (where signals cannot be used) the math-verify work moves to a few lazily started worker processes that
apply the same timer in their own main thread and are killed if they overrun.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy import Basic, FiniteSet, MatrixBase, Set, Tuple, preorder_traversal

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "REWARD_FUNCS",
    "MathAccuracyReward",
    "FormatReward",
    "completion_text",
    "extract_final_answer",
    "extract_gold_answer",
    "format_reward",
    "get_reward_funcs",
    "math_accuracy_reward",
]

DEFAULT_TIMEOUT_SECONDS = 2.0
# Final answers longer than this are not answers (no benchmark gold is close); refusing them keeps sympy bounded.
MAX_ANSWER_CHARS = 1_000
# Only the tail of a completion can hold its final answer; scanning a bounded tail keeps regexes linear and cheap.
MAX_TAIL_CHARS = 4_000
# DAPO's rule: the `Answer:` line is looked for in the last 300 characters.
ANSWER_LINE_TAIL_CHARS = 300

_GOLD_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())
# Like TRL's `accuracy_reward`: without a box, an answer counts only when anchored ("answer is", "Final Answer:").
_UNBOXED_CONFIG = (
    LatexExtractionConfig(try_extract_without_anchor=False),
    ExprExtractionConfig(try_extract_without_anchor=False),
)
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_LINE = re.compile(r"(?i)answer\s*:\s*([^\n]+)")
_GSM8K_GOLD = re.compile(r"####\s*([^\n]+)")
# A run of boxes is one answer when the boxes are adjacent, or close and joined by a separator: math-verify's rule
# (`latex2sympy2_extended.math_normalization.extract_boxed_content`, which returns the run as one string; the parts
# are needed here), plus lighteval's: a gap of many words ("and and and or thus but") is not a separator.
_BOX_RUN_ADJACENT_CHARS = 10
_BOX_RUN_SEPARATED_CHARS = 70
_BOX_RUN_SEPARATOR = re.compile(r"\b(?:and|or)\b|,|;")
_BOX_RUN_MAX_WORDS = 4
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]+")
# Thousands separators: plain `,`, LaTeX `{,}` and `,\!`, or thin / plain spaces between groups of exactly 3 digits.
_GROUP_SEPARATOR = r"(?:,|\{,\}|,\\!\s*|\\,|\\ |\s)"
_NUMBER = re.compile(rf"([+-]?)(\d{{1,3}}(?:{_GROUP_SEPARATOR}\d{{3}})+|\d+)(\.\d+)?")
_GROUPED_NUMBER = re.compile(rf"(?<![\d.]){_NUMBER.pattern}(?![\d])")
# Words left in an answer line once math, LaTeX commands and the connectors "and" / "or" are removed: prose.
_MATH_SEGMENT = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+(?:\{[^{}]*\})?")
_PROSE_WORD = re.compile(r"\b(?!(?:and|or)\b)[A-Za-z]{2,}")
_INTEGER = re.compile(r"[+-]?\d+")
# An unboxed answer after its last "answer" anchor that names several values ("3 or 4", "1, 5", "1,2,3"); math-verify
# would take the first of them as the answer.
_ANCHOR = re.compile(r"(?i)answer")
_MATH_WRAPPER = re.compile(r"\$|\\[()\[\]]|\\text\{\s*|\\quad")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
_BRACKETED = re.compile(r"[(\[{][^()\[\]{}]*[)\]}]")
_SEVERAL_VALUES = re.compile(r"\d\s*\}?\s*(?:,|;|\bor\b|\band\b)\s*(?:either\s+)?[-+]?\.?\d")
# Blanks are insignificant except between two digits, where `1 2` is not `12`.
_BLANK_NOT_BETWEEN_DIGITS = re.compile(r"(?<!\d)\s+|\s+(?!\d)")
_TEXT_WITH_DIGIT = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm)\s*\{[^{}]*\d[^{}]*\}")
_GROUPING_COMMA = re.compile(r",(?:\\!\s*)?\d{3}(?!\d)")
_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[")


class _AnswerTimeout(BaseException):
    # BaseException so that sympy's broad `except Exception` blocks cannot swallow the interruption.
    pass


class _DropTimeoutDisabledWarning(logging.Filter):
    # math-verify warns once that its own timeout is off; ours is on (see `_time_limit`), so the warning is wrong here.
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_TIMEOUT_NOTE_DROPPED = _DropTimeoutDisabledWarning()


@contextlib.contextmanager
def _math_verify_timeout_note_dropped() -> Iterator[None]:
    """Drop math-verify's "Timeout is disabled" note during our own calls only: the user's loggers stay as they are."""
    loggers = [logging.getLogger(name) for name in ("math_verify.parser", "math_verify.grader")]
    for note_logger in loggers:
        note_logger.addFilter(_TIMEOUT_NOTE_DROPPED)
    try:
        yield
    finally:
        for note_logger in loggers:
            note_logger.removeFilter(_TIMEOUT_NOTE_DROPPED)


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    r"""Text of one completion: a plain string, or the content of the last message of a chat-format completion.

    Example:
        >>> completion_text([{"role": "assistant", "content": "\\boxed{2}"}])
        '\\boxed{2}'
    """
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content", "")
    if isinstance(content, list):  # multimodal content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else str(content)


@dataclass(frozen=True)
class _Box:
    start: int  # index of the backslash
    end: int  # index just after the box
    content: str


def _read_box(text: str, start: int, limit: int) -> _Box | None:
    r"""The box whose command starts at `start`, read no further than `limit`; None when it is not closed there."""
    index = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if text.startswith(" ", index):  # `\boxed 5`
        rest = text[index:limit]
        token = rest.split(maxsplit=1)
        if not token:
            return None
        end = index + rest.index(token[0]) + len(token[0])
        return _Box(start, end, token[0].rstrip("$."))
    if not text.startswith("{", index):
        return None
    depth = 0
    for position in range(index, limit):
        char = text[position]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return _Box(start, position + 1, text[index + 1 : position].strip())
    return None


def _last_box_run(text: str) -> list[_Box]:
    r"""The last `\boxed{}` / `\fbox{}` of `text` with the boxes just before it that belong to the same answer.

    Boxes belong together when adjacent (`\boxed{1}\boxed{2}`), or less than 70 characters and at most 4 words apart
    and joined by "and", "or", "," or ";" (`\boxed{k = 45} \quad\text{and}\quad \boxed{n = 2}`), as math-verify
    joins them; repeated boxes count once.
    Scanning right to left, each box is read only up to the start of the next one, so the cost is linear. Empty when
    there is no box or the last box is never closed.
    """
    found: list[_Box] = []  # right to left
    limit = len(text)
    # Rightmost position of each command before `limit`; `limit` only decreases, so a position left of it stays valid.
    positions = dict.fromkeys(_BOX_COMMANDS, limit)
    while True:
        for command, position in positions.items():
            if position >= limit:
                positions[command] = text.rfind(command, 0, limit)
        start = max(positions.values())
        if start < 0:
            break
        box = _read_box(text, start, limit)
        if box is None:
            break
        if found:
            between = text[box.end : limit]
            separated = (
                len(between) < _BOX_RUN_SEPARATED_CHARS
                and _BOX_RUN_SEPARATOR.search(between)
                and len(_WORD.findall(_LATEX_COMMAND.sub(" ", between))) <= _BOX_RUN_MAX_WORDS
            )
            if not (len(between) < _BOX_RUN_ADJACENT_CHARS or (box.content != found[-1].content and separated)):
                break
        if not found or box.content != found[-1].content:
            found.append(box)
        limit = start
    return found[::-1]


def _strip_answer(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    delimited = re.fullmatch(r"\$+([^$]*)\$+", answer)  # `$x$`, `$$x$$`; not `$1$ and $2$`
    return delimited.group(1).strip() if delimited else answer


def _plain_number(text: str) -> str:
    """`text` without its thousands separators when it is one grouped number (`1,234` -> `1234`), else unchanged.

    Only real groupings count (1-3 digits, then groups of exactly 3): `1, 2` and `32, 349` are lists, not numbers.
    """
    match = _NUMBER.fullmatch(text.strip())
    if match is None:
        return text
    sign, digits, decimals = match.groups()
    return sign + re.sub(r"\D", "", digits) + (decimals or "")


def _is_prose(answer: str) -> bool:
    """Whether an answer line holds words besides its math ("The final answer is 7.78", "12 apples")."""
    return bool(_PROSE_WORD.search(_MATH_SEGMENT.sub(" ", answer)))


def _states_several_values(text: str) -> bool:
    """Whether the anchored answer in `text` (after its last "answer", to the end of that sentence) lists several
    values. A real thousands grouping (`10,455`) and a bracketed tuple, interval or set (`(-6, 10)`) are one value.
    """
    anchors = list(_ANCHOR.finditer(text))
    start = anchors[-1].end() if anchors else 0
    sentence_end = _SENTENCE_END.search(text, start)
    region = _MATH_WRAPPER.sub(" ", text[start : sentence_end.start() if sentence_end else len(text)])
    region = _BRACKETED.sub(" x ", _GROUPED_NUMBER.sub(lambda match: _plain_number(match.group()), region))
    return bool(_SEVERAL_VALUES.search(region))


def _gold_parts(gold: str) -> list[str]:
    """The parts of a gold as datasets store it: its last run of boxes, a GSM8K `####` line, or the stripped text."""
    gsm8k = _GSM8K_GOLD.findall(gold)
    if gsm8k:
        return [_plain_number(gsm8k[-1].strip())]
    run = _last_box_run(gold)
    if run:
        return [box.content for box in run]
    return [_strip_answer(gold)]


def extract_gold_answer(gold: str | int | float) -> str:
    r"""Reduce a gold answer as datasets store it to the bare answer.

    GSM8K golds (`"... #### 1,234"`) give the text after `####` without thousands separators; MATH-style worked
    solutions give the content of their last `\boxed{}`, and several boxes that state one answer together
    (`\(\boxed{1}\) and \(\boxed{-2}\)`) give all of them, joined by `", "`; outer `$...$` delimiters are removed;
    numbers are turned into strings (`40.0` -> `"40"`). Anything else is returned stripped.

    Example:
        >>> extract_gold_answer("Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72")
        '72'
        >>> extract_gold_answer("so the answer is $\\boxed{\\frac{1}{2}}$.")
        '\\frac{1}{2}'
        >>> extract_gold_answer("\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).")
        '1, -2'
    """
    if isinstance(gold, bool):
        return str(gold)
    if isinstance(gold, float) and gold.is_integer():
        return str(int(gold))
    if isinstance(gold, int | float):
        return str(gold)
    return ", ".join(_gold_parts(gold))


@dataclass(frozen=True)
class _Found:
    """What a completion states: `kind` is "box", "line" (an `Answer:` line that is math), "gsm8k" (`#### ...`),
    "prose_line" (an `Answer:` line with words) or "tail" (no stated answer; the tail of the text). For "box",
    `parts` are the contents of the last run of boxes; for the lines, the line's answer; for "prose_line" and
    "tail", the text in which math-verify looks for an anchored answer."""

    kind: str
    parts: tuple[str, ...]

    @property
    def exact(self) -> bool:
        return self.kind in ("box", "line", "gsm8k")


def _find_answer(text: str, think_delimiter: str | None) -> _Found | None:
    if think_delimiter:
        cut = text.rfind(think_delimiter)
        if cut >= 0:
            text = text[cut + len(think_delimiter) :]
    text = text[-MAX_TAIL_CHARS:]
    run = _last_box_run(text)
    offset = max(0, len(text) - ANSWER_LINE_TAIL_CHARS)
    lines = list(_ANSWER_LINE.finditer(text, offset))
    line = lines[-1] if lines else None
    # An answer line written after the last box ("... \boxed{255} ... Final Answer: 10,455") is the final answer.
    if run and (line is None or line.start() < run[-1].end):
        return _Found("box", tuple(box.content for box in run))
    if line is not None:
        answer = _strip_answer(line.group(1))
        if not _is_prose(answer):
            return _Found("line", (answer,))
        # From "Answer:" on (with a "Final " before it, which math-verify's anchors use), so that a box earlier on
        # the same line is not taken instead of what the line says.
        start = line.start()
        if text[max(0, start - len("final ")) : start].lower() == "final ":
            start -= len("final ")
        return _Found("prose_line", (text[start : line.end()],))
    gsm8k = _GSM8K_GOLD.findall(text, offset)
    if gsm8k:
        return _Found("gsm8k", (_plain_number(_strip_answer(gsm8k[-1])),))
    text = text.strip()
    return _Found("tail", (text,)) if text else None


def extract_final_answer(text: str, think_delimiter: str | None = "</think>") -> tuple[str, bool] | None:
    r"""Find the final answer in a completion.

    Returns `(answer, is_exact)`. `is_exact` is True for the content of the last `\boxed{}` (with the boxes just
    before it that state the same answer, joined by `", "`), else of the last `Answer: ...` line in the last 300
    characters (DAPO) when it is math, else of a GSM8K `#### ...` line; an `Answer:` line written after the last box
    wins over the box. It is False when math-verify must look for an anchored answer in the text returned: an answer
    line that holds prose ("Final Answer: The final answer is 7.78."), or the tail of the text. Text up to the last
    `think_delimiter` is ignored. Returns None when there is nothing to score.

    Example:
        >>> extract_final_answer("<think>maybe \\boxed{3}</think> so \\boxed{4}")
        ('4', True)
        >>> extract_final_answer("...\nAnswer: $-3$")
        ('-3', True)
        >>> extract_final_answer("\\boxed{1} and \\boxed{2}")
        ('1, 2', True)
    """
    found = _find_answer(text, think_delimiter)
    if found is None:
        return None
    return ", ".join(found.parts), found.exact


def _fast_decision(answer: str, gold: str) -> bool | None:
    """Decide without sympy where strings suffice (integers, identical strings); None when math-verify is needed."""
    if _BLANK_NOT_BETWEEN_DIGITS.sub("", answer) == _BLANK_NOT_BETWEEN_DIGITS.sub("", gold):
        return True
    answer, gold = _plain_number(answer), _plain_number(gold)
    # Length bound: Python refuses int() of more than 4300 digits.
    if len(gold) < 100 and len(answer) < 100 and _INTEGER.fullmatch(gold) and _INTEGER.fullmatch(answer):
        return int(gold) == int(answer)  # AIME mirrors store "073"
    return None


class _time_limit:  # noqa: N801  (used as a context manager, reads like a function)
    """Raise `_AnswerTimeout` after `seconds` of wall time; main thread only (uses `SIGALRM`)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def _raise(self, signum, frame):
        raise _AnswerTimeout

    def __enter__(self):
        self.previous = signal.signal(signal.SIGALRM, self._raise)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
        return False


# One math-verify job: the answer's parts, whether they are exact (else text to search), the gold, the time bound.
_Job = tuple[tuple[str, ...], bool, str, float]


def _parse_boxed(answer: str) -> list:
    """math-verify's reading of one stated answer (a box's content, a gold), lost parts dropped."""
    parsed = parse("\\boxed{" + _plain_number(answer) + "}", _GOLD_CONFIG, parsing_timeout=None, raise_on_error=True)
    return _drop_lost_parts(parsed, answer)


def _parse_gold(gold: str) -> list:
    if _MATH_DELIMITER.search(gold):  # LaTeX prose such as "$1$ and $2$": math-verify finds the answer in it
        return _drop_lost_parts(parse(gold, _GOLD_CONFIG, parsing_timeout=None, raise_on_error=True))
    return _parse_boxed(gold)


def _drop_lost_parts(parsed: list, answer: str | None = None) -> list:
    """math-verify's result without its sympy value when that value lost parts of the answer.

    latex2sympy sometimes reads a list it cannot parse as its first item (`x = \\frac{1}{2}, x = \\frac{-1 \\pm
    \\sqrt{13}}{4}` becomes 1/2), and math-verify drops `\\text{}` as a unit even when it holds numbers
    (`3 \\text{ (or 4)}` becomes 3), so a wrong or missing part would still verify. Then only a string is kept,
    which `verify` compares exactly: the stated `answer` when given, else math-verify's normalized string. A value
    holding a set, tuple, interval or matrix kept its parts.
    """
    if len(parsed) != 2 or not isinstance(parsed[0], Basic) or not isinstance(parsed[1], str):
        return parsed
    if any(isinstance(node, Set | Tuple | MatrixBase) for node in preorder_traversal(parsed[0])):
        return parsed
    if answer is None:
        return parsed[1:] if _has_top_level_comma(parsed[1]) else parsed
    return [answer] if _has_top_level_comma(answer) or _TEXT_WITH_DIGIT.search(answer) else parsed


def _has_top_level_comma(text: str) -> bool:
    """A comma outside brackets and braces that is not a thousands separator (`1,234`)."""
    depth = 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif (
            char == ","
            and depth == 0
            and not (text[index - 1 : index].isdigit() and _GROUPING_COMMA.match(text, index))
        ):
            return True
    return False


def _verify_one(parts: tuple[str, ...], is_exact: bool, gold: str, timeout_seconds: float) -> bool:
    """math-verify an answer against `gold` within `timeout_seconds`; any error or timeout counts as wrong.

    Exact answers in several parts (a run of boxes) are compared as one answer, a set, when the gold has several
    parts too; otherwise the last part is the answer, so that a partial answer never matches a multi-part gold and
    boxing several candidates never earns more than boxing the last one.
    """
    try:
        with _time_limit(timeout_seconds), _math_verify_timeout_note_dropped():
            gold_parsed = _parse_gold(gold)
            if not gold_parsed:
                return False
            if is_exact:
                several = len(parts) > 1 and isinstance(gold_parsed[0], FiniteSet) and len(gold_parsed[0]) > 1
                answer = ", ".join(parts) if several else parts[-1]
                predicted = _parse_boxed(answer)
            else:
                predicted = parse(
                    parts[0], _UNBOXED_CONFIG, extraction_mode="first_match", parsing_timeout=None, raise_on_error=True
                )
                if predicted and not isinstance(predicted[0], FiniteSet) and _states_several_values(parts[0]):
                    return False  # "the answer is 3 or 4": math-verify keeps 3, which must not pay against gold 3
            return bool(predicted) and verify(gold_parsed, predicted, timeout_seconds=None, raise_on_error=True)
    except _AnswerTimeout:
        return False
    except Exception:  # malformed LaTeX and sympy errors: the answer is simply not verified
        return False


def _verify_batch(jobs: list[_Job]) -> list[bool]:
    return [_verify_one(*job) for job in jobs]


# Worker processes for calls from non-main threads. They are plain `python -c` subprocesses rather than a
# multiprocessing pool: spawn/forkserver re-import the caller's `__main__` (breaking unguarded scripts) and fork is
# unsafe in a threaded process.
# The worker loads this file alone, not the `ce_gppo_trl` package (which imports TRL and torch: seconds per start).
_WORKER_COMMAND = (
    "import importlib.util, sys; "
    "spec = importlib.util.spec_from_file_location('_ce_gppo_verify_worker', sys.argv[1]); "
    "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; "
    "spec.loader.exec_module(module); module._serve_worker()"
)
_MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))
_WORKER_STARTUP_SECONDS = 60.0
_idle_workers: list[_Worker] = []
_worker_slots = threading.BoundedSemaphore(_MAX_WORKERS)
_workers_lock = threading.Lock()
logger = logging.getLogger(__name__)


def _serve_worker() -> None:
    """Worker loop: read length-prefixed pickled job lists on stdin, answer with pickled results on stdout."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the reply stream
    while True:
        header = requests.read(8)
        if len(header) < 8:
            return  # the parent closed the pipe or exited
        jobs = pickle.loads(requests.read(int.from_bytes(header, "little")))
        reply = pickle.dumps(_verify_batch(jobs))
        replies.write(len(reply).to_bytes(8, "little") + reply)
        replies.flush()


class _Worker:
    def __init__(self):
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_COMMAND, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=environment,
        )
        self.started = False

    def run(self, jobs: list[_Job]) -> list[bool] | None:
        """Results of `jobs`, or None when the worker died or overran its time bound."""
        payload = pickle.dumps(jobs)
        budget = sum(job[3] for job in jobs) + 10.0 + (0.0 if self.started else _WORKER_STARTUP_SECONDS)
        deadline = time.monotonic() + budget
        try:
            self.process.stdin.write(len(payload).to_bytes(8, "little") + payload)
            self.process.stdin.flush()
        except OSError:
            return None
        reply, size, fd = b"", None, self.process.stdout.fileno()
        while size is None or len(reply) < size + 8:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            reply += chunk
            if size is None and len(reply) >= 8:
                size = int.from_bytes(reply[:8], "little")
        self.started = True
        return pickle.loads(reply[8:])

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def _verify_in_worker(jobs: list[_Job]) -> list[bool]:
    with _worker_slots:
        with _workers_lock:
            worker = _idle_workers.pop() if _idle_workers else None
        worker = worker or _Worker()
        results = worker.run(jobs)
        if results is None:
            worker.kill()
            logger.warning("math verification worker failed or overran; %d answer(s) scored as wrong", len(jobs))
            return [False] * len(jobs)
        with _workers_lock:
            _idle_workers.append(worker)
        return results


@atexit.register
def _stop_workers() -> None:
    with _workers_lock:
        while _idle_workers:
            _idle_workers.pop().kill()


def _run_jobs(jobs: list[_Job]) -> list[bool]:
    if not jobs:
        return []
    if threading.current_thread() is threading.main_thread():
        return _verify_batch(jobs)
    return _verify_in_worker(jobs)


class MathAccuracyReward:
    r"""Math-verify accuracy reward with a configurable scale; see `math_accuracy_reward` for the rules.

    Args:
        correct: reward of a correct answer (default 1.0).
        incorrect: reward of a wrong, missing or unscorable answer (default 0.0; the CE-GPPO/ERC/DAPO papers use -1.0).
        timeout_seconds: wall-time bound on math-verify for one completion.
        think_delimiter: text after the last occurrence of it is scored; None scores the whole completion.

    Example:
        >>> signed = MathAccuracyReward(correct=1.0, incorrect=-1.0)
        >>> signed(["\\boxed{7}", "\\boxed{8}"], ["7", "7"])
        [1.0, -1.0]
    """

    # A callable class rather than a closure so that it pickles (TRL may ship reward functions to another process);
    # TRL logs `rewards/<__name__>/mean`.
    __name__ = "math_accuracy_reward"

    def __init__(
        self,
        correct: float = 1.0,
        incorrect: float = 0.0,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        think_delimiter: str | None = "</think>",
    ):
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds!r}")
        if correct <= incorrect:
            raise ValueError(f"correct ({correct!r}) must be greater than incorrect ({incorrect!r})")
        self.correct = float(correct)
        self.incorrect = float(incorrect)
        self.timeout_seconds = float(timeout_seconds)
        self.think_delimiter = think_delimiter

    def __call__(
        self,
        completions: Sequence[Any],
        solution: Sequence[Any] | None = None,
        answer: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        golds = solution if solution is not None else answer
        if golds is None:
            raise ValueError(
                "math_accuracy_reward needs the gold answers in a dataset column named 'solution' or 'answer'; "
                f"it was called with neither (keyword arguments: {sorted(kwargs)})"
            )
        if len(completions) != len(golds):
            raise ValueError(f"got {len(completions)} completions but {len(golds)} gold answers; they must match")
        decisions: list[bool | None] = []
        jobs: list[_Job] = []
        job_rows = []
        gold_answers: dict[Any, str] = {}
        for row, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
            key = gold if isinstance(gold, str | int | float) else repr(gold)
            if key not in gold_answers:
                gold_answers[key] = (
                    ""
                    if gold is None
                    else extract_gold_answer(gold if isinstance(gold, str | int | float) else str(gold))
                )
            gold_answer = gold_answers[key]
            found = _find_answer(completion_text(completion), self.think_delimiter)
            if found is None or not gold_answer or (found.exact and sum(map(len, found.parts)) > MAX_ANSWER_CHARS):
                decisions.append(False)
                continue
            decision = None
            if found.exact and (len(found.parts) == 1 or _INTEGER.fullmatch(_plain_number(gold_answer))):
                decision = _fast_decision(found.parts[-1], gold_answer)
            decisions.append(decision)
            if decision is None:
                jobs.append((found.parts, found.exact, gold_answer, self.timeout_seconds))
                job_rows.append(row)
        for row, verified in zip(job_rows, _run_jobs(jobs), strict=True):
            decisions[row] = verified
        return [self.correct if decision else self.incorrect for decision in decisions]


_BINARY_ACCURACY = MathAccuracyReward()


def math_accuracy_reward(
    completions: Sequence[Any],
    solution: Sequence[Any] | None = None,
    answer: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    r"""1.0 when a completion's final answer equals the gold answer (math-verify), else 0.0.

    `completions` are strings or chat-format message lists. The golds come from the dataset column `solution` or, when
    there is none, `answer` (GSM8K, many user datasets; TRL passes every column as a keyword), as datasets store them:
    `"34"`, `"\\frac12"`, `"(1,2]"`, GSM8K `"... #### 72"`, a MATH solution with `\\boxed{}`, several boxes that
    state one answer. The text after the last `</think>` is scored: its last `\\boxed{}` (with the boxes just before
    it when the gold has several parts), else its last `Answer: ...` line (DAPO; parsed for an anchored answer when it
    holds prose), else a `####` line, else an anchored answer ("the answer is", "Final Answer:"). Unboxed,
    unanchored answers score 0.0; see the scoring table in docs/data-rewards-evaluation.md. Malformed, hostile or
    overlong input scores 0.0 within `DEFAULT_TIMEOUT_SECONDS` per completion, from any thread. For the +1/-1 scale
    of the papers use `MathAccuracyReward(incorrect=-1.0)` or `get_reward_funcs(["math_accuracy"], scale="signed")`.

    Raises:
        ValueError: neither `solution` nor `answer` is given, or their length differs from `completions`'.

    Example:
        >>> chat = [{"role": "assistant", "content": "\\boxed{0.5}"}]
        >>> math_accuracy_reward(["\\boxed{7}", chat], ["7", "\\frac12"])
        [1.0, 1.0]
        >>> gold = "\\(\\boxed{1}\\) and \\(\\boxed{-2}\\)"
        >>> math_accuracy_reward(["\\boxed{-2, 1}", "\\boxed{-2}"], answer=[gold, gold])
        [1.0, 0.0]
    """
    return _BINARY_ACCURACY(completions, solution, answer, **kwargs)


class FormatReward:
    r"""1.0 when a completion states a findable final answer, else 0.0.

    The text after the last `think_delimiter` must contain a `\boxed{}` with balanced braces or an `Answer: ...`
    line; with `require_think=True` the delimiter itself must be present (a reasoning model that never closed its
    thinking gets 0.0). For the `<think>...</think>` layout check use TRL's `think_format_reward` ("think_format").

    Example:
        >>> FormatReward()(["so \\boxed{4}", "I think it is 4"])
        [1.0, 0.0]
    """

    __name__ = "format_reward"

    def __init__(self, think_delimiter: str = "</think>", require_think: bool = False):
        self.think_delimiter = think_delimiter
        self.require_think = require_think

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        rewards = []
        for completion in completions:
            text = completion_text(completion)
            if self.require_think and self.think_delimiter not in text:
                rewards.append(0.0)
                continue
            found = _find_answer(text, self.think_delimiter)
            rewards.append(1.0 if found is not None and found.kind != "tail" and found.parts[-1] else 0.0)
        return rewards


format_reward = FormatReward()


def _math_accuracy_factory(
    scale: str = "binary", timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, think_delimiter: str | None = "</think>"
) -> Callable:
    scales = {"binary": (1.0, 0.0), "signed": (1.0, -1.0)}
    if scale not in scales:
        raise ValueError(f"scale must be one of {sorted(scales)}, got {scale!r}")
    correct, incorrect = scales[scale]
    return MathAccuracyReward(correct, incorrect, timeout_seconds, think_delimiter)


def _format_factory(think_delimiter: str | None = "</think>", require_think: bool = False) -> Callable:
    return FormatReward(think_delimiter or "</think>", require_think)


def _overlong_factory(max_completion_length: int | None = None, overlong_buffer: int | None = None) -> Callable:
    if max_completion_length is None or max_completion_length <= 0:
        raise ValueError(
            f"the 'overlong' reward needs max_completion_length > 0 (tokens), got {max_completion_length!r}"
        )
    if overlong_buffer is None:
        overlong_buffer = max_completion_length // 5  # DAPO: 4096-token buffer for 20480-token responses
    if not 0 <= overlong_buffer <= max_completion_length:
        raise ValueError(f"overlong_buffer must be in [0, {max_completion_length}], got {overlong_buffer!r}")
    from trl.rewards import get_soft_overlong_punishment  # TRL is heavy; this module must load without it

    return get_soft_overlong_punishment(max_completion_length, overlong_buffer)


def _think_format_factory() -> Callable:
    from trl.rewards import think_format_reward

    return think_format_reward


REWARD_FUNCS: dict[str, Callable[..., Callable]] = {
    "math_accuracy": _math_accuracy_factory,
    "format": _format_factory,
    "overlong": _overlong_factory,
    "think_format": _think_format_factory,
}
"""Reward name -> factory. A factory takes the options it understands (see `get_reward_funcs`) and returns the
reward callable that `GRPOTrainer(reward_funcs=...)` accepts."""


def get_reward_funcs(names: Sequence[str], **options: Any) -> list[Callable]:
    """Build reward callables by name, in order, for `GRPOTrainer(reward_funcs=...)`.

    Names: "math_accuracy", "format", "overlong" (DAPO soft overlong punishment, TRL's implementation),
    "think_format" (TRL's `think_format_reward`). Options go to every factory that accepts them:
    `scale` ("binary" 1/0 or "signed" +1/-1), `timeout_seconds`, `think_delimiter` (math_accuracy, format),
    `require_think` (format), `max_completion_length` and `overlong_buffer` (overlong; buffer defaults to 20% of the
    length). Weights are TRL's `GRPOConfig.reward_weights`, one per name.

    Raises:
        ValueError: an unknown name (the allowed names are listed) or an option no selected reward accepts.

    Example:
        >>> [f.__name__ for f in get_reward_funcs(["math_accuracy", "overlong"], max_completion_length=512)]
        ['math_accuracy_reward', 'soft_overlong_punishment_reward']
    """
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"unknown reward name(s) {unknown}; allowed names are {sorted(REWARD_FUNCS)}")
    used: set[str] = set()
    funcs = []
    for name in names:
        factory = REWARD_FUNCS[name]
        accepted = {key: value for key, value in options.items() if key in inspect.signature(factory).parameters}
        used.update(accepted)
        funcs.append(factory(**accepted))
    unused = sorted(set(options) - used)
    if unused:
        raise ValueError(f"reward option(s) {unused} are not used by the rewards {list(names)}")
    return funcs
