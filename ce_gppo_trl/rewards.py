r"""Reward functions for math RL, callable the way TRL's `GRPOTrainer` calls them.

Every reward takes `completions` (plain strings or chat messages) plus dataset columns as keyword arguments and
returns one float per completion. The accuracy reward follows the CE-GPPO / ERC verl setup: score the text after the
last `</think>`, take the last `\boxed{}` (or a DAPO-style `Answer: ...` line), and let math-verify decide whether it
equals the gold answer as datasets store it (raw LaTeX such as `\frac12`, `(1,2]`, `#### 72`, a full MATH solution).

Time per completion is bounded: in the main thread by a `SIGALRM` timer around parse and verify; in any other
thread (where signals cannot be used) the math-verify work moves to a few lazily started worker processes that
apply the same timer in their own main thread and are killed if they overrun.
"""

from __future__ import annotations

import atexit
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
from collections.abc import Callable, Sequence
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

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

_GOLD_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())
# Like TRL's `accuracy_reward`: without a box, an answer counts only when anchored ("answer is", `$...$`).
_UNBOXED_CONFIG = (
    LatexExtractionConfig(try_extract_without_anchor=False),
    ExprExtractionConfig(try_extract_without_anchor=False),
)
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_LINE = re.compile(r"(?i)answer\s*:\s*([^\n]+)")
_GSM8K_GOLD = re.compile(r"####\s*([^\n]+)")
_INTEGER = re.compile(r"[+-]?\d+")


class _AnswerTimeout(BaseException):
    # BaseException so that sympy's broad `except Exception` blocks cannot swallow the interruption.
    pass


class _DropTimeoutDisabledWarning(logging.Filter):
    # math-verify warns once that its own timeout is off; ours is on (see `_time_limit`), so the warning is wrong here.
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


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


def _last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` / `\fbox{...}` in `text` (balanced braces), `\boxed 5` style included."""
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start:]
    rest = rest[len("\\boxed") :] if rest.startswith("\\boxed") else rest[len("\\fbox") :]
    if rest.startswith(" "):
        token = rest.strip().split(maxsplit=1)
        return token[0].rstrip("$.") if token else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for index, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:index]
    return None  # unbalanced: the box was never closed


def _strip_answer(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer


def extract_gold_answer(gold: str | int | float) -> str:
    r"""Reduce a gold answer as datasets store it to the bare answer.

    GSM8K golds (`"... #### 1,234"`) give the text after `####` without commas; MATH-style worked solutions give the
    content of their last `\boxed{}`; `$...$` delimiters are removed; numbers are turned into strings (`40.0` ->
    `"40"`). Anything else is returned stripped.

    Example:
        >>> extract_gold_answer("Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72")
        '72'
        >>> extract_gold_answer("so the answer is $\\boxed{\\frac{1}{2}}$.")
        '\\frac{1}{2}'
    """
    if isinstance(gold, bool):
        return str(gold)
    if isinstance(gold, float) and gold.is_integer():
        return str(int(gold))
    if isinstance(gold, int | float):
        return str(gold)
    match = _GSM8K_GOLD.findall(gold)
    if match:
        return match[-1].strip().replace(",", "")
    boxed = _last_boxed(gold)
    if boxed is not None:
        return boxed.strip()
    return _strip_answer(gold)


def extract_final_answer(text: str, think_delimiter: str | None = "</think>") -> tuple[str, bool] | None:
    r"""Find the final answer in a completion.

    Returns `(answer, is_exact)`: `is_exact` is True for the content of the last `\boxed{}`, else of the last
    `Answer: ...` line (DAPO), else of a GSM8K `#### ...` line; False for the fallback, the tail of the text, where
    math-verify searches for an anchored answer. Text up to the last `think_delimiter` is ignored. Returns None
    when there is nothing to score.

    Example:
        >>> extract_final_answer("<think>maybe \\boxed{3}</think> so \\boxed{4}")
        ('4', True)
        >>> extract_final_answer("...\nAnswer: $-3$")
        ('-3', True)
    """
    if think_delimiter:
        cut = text.rfind(think_delimiter)
        if cut >= 0:
            text = text[cut + len(think_delimiter) :]
    text = text[-MAX_TAIL_CHARS:]
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip(), True
    tail = text[-300:]  # DAPO's rule: the answer line is in the last 300 characters
    lines = _ANSWER_LINE.findall(tail)
    if lines:
        return _strip_answer(lines[-1]), True
    gsm8k = _GSM8K_GOLD.findall(tail)
    if gsm8k:
        return _strip_answer(gsm8k[-1]).replace(",", ""), True
    text = text.strip()
    return (text, False) if text else None


def _fast_decision(answer: str, gold: str) -> bool | None:
    """Decide without sympy where strings suffice (integers, identical strings); None when math-verify is needed."""
    compact_answer, compact_gold = answer.replace(" ", ""), gold.replace(" ", "")
    if compact_answer == compact_gold:
        return True
    # Length bound: Python refuses int() of more than 4300 digits.
    if (
        len(compact_gold) < 100
        and _INTEGER.fullmatch(compact_gold)
        and _INTEGER.fullmatch(compact_answer.replace(",", ""))
    ):
        # AIME mirrors store "073"; compare as integers.
        return int(compact_gold) == int(compact_answer.replace(",", ""))
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


def _verify_one(answer: str, is_exact: bool, gold: str, timeout_seconds: float) -> bool:
    """math-verify `answer` against `gold` within `timeout_seconds`; any error or timeout counts as wrong."""
    try:
        with _time_limit(timeout_seconds):
            gold_parsed = parse("\\boxed{" + gold + "}", _GOLD_CONFIG, parsing_timeout=None, raise_on_error=True)
            if not gold_parsed:
                return False
            if is_exact:
                predicted = parse("\\boxed{" + answer + "}", _GOLD_CONFIG, parsing_timeout=None, raise_on_error=True)
            else:
                predicted = parse(
                    answer, _UNBOXED_CONFIG, extraction_mode="first_match", parsing_timeout=None, raise_on_error=True
                )
            return bool(predicted) and verify(gold_parsed, predicted, timeout_seconds=None, raise_on_error=True)
    except _AnswerTimeout:
        return False
    except Exception:  # malformed LaTeX and sympy errors: the answer is simply not verified
        return False


def _verify_batch(jobs: list[tuple[str, bool, str, float]]) -> list[bool]:
    return [_verify_one(*job) for job in jobs]


# Worker processes for calls from non-main threads. They are plain `python -c` subprocesses rather than a
# multiprocessing pool: spawn/forkserver re-import the caller's `__main__` (breaking unguarded scripts) and fork is
# unsafe in a threaded process.
# The worker loads this file alone, not the `ce_gppo_trl` package (which imports TRL and torch: seconds per start).
_WORKER_COMMAND = (
    "import importlib.util, sys; "
    "spec = importlib.util.spec_from_file_location('_ce_gppo_verify_worker', sys.argv[1]); "
    "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); module._serve_worker()"
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

    def run(self, jobs: list[tuple[str, bool, str, float]]) -> list[bool] | None:
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


def _verify_in_worker(jobs: list[tuple[str, bool, str, float]]) -> list[bool]:
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


def _run_jobs(jobs: list[tuple[str, bool, str, float]]) -> list[bool]:
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

    def __call__(self, completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(completions) != len(solution):
            raise ValueError(f"got {len(completions)} completions but {len(solution)} solutions; they must match")
        decisions: list[bool | None] = []
        jobs, job_rows = [], []
        golds: dict[Any, str] = {}
        for row, (completion, gold) in enumerate(zip(completions, solution, strict=True)):
            key = gold if isinstance(gold, str | int | float) else repr(gold)
            if key not in golds:
                golds[key] = extract_gold_answer(gold if isinstance(gold, str | int | float) else str(gold))
            gold_answer = golds[key]
            found = extract_final_answer(completion_text(completion), self.think_delimiter)
            if found is None or not gold_answer or (found[1] and len(found[0]) > MAX_ANSWER_CHARS):
                decisions.append(False)
                continue
            answer, is_exact = found
            decision = _fast_decision(answer, gold_answer) if is_exact else None
            decisions.append(decision)
            if decision is None:
                jobs.append((answer, is_exact, gold_answer, self.timeout_seconds))
                job_rows.append(row)
        for row, verified in zip(job_rows, _run_jobs(jobs), strict=True):
            decisions[row] = verified
        return [self.correct if decision else self.incorrect for decision in decisions]


_BINARY_ACCURACY = MathAccuracyReward()


def math_accuracy_reward(completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any) -> list[float]:
    r"""1.0 when a completion's final answer equals the gold answer (math-verify), else 0.0.

    `completions` are strings or chat-format message lists; `solution` holds the golds as datasets store them
    (`"34"`, `"\\frac12"`, `"(1,2]"`, GSM8K `"... #### 72"`, a MATH solution with `\\boxed{}`). The text after
    the last `</think>` is scored; its last `\\boxed{}` is the answer, else its last `Answer: ...` line (DAPO), else an
    anchored answer (`$...$`, "the answer is"). Malformed, hostile or overlong input scores 0.0 within
    `DEFAULT_TIMEOUT_SECONDS` per completion, from any thread. For the +1/-1 scale of the papers use
    `MathAccuracyReward(incorrect=-1.0)` or `get_reward_funcs(["math_accuracy"], scale="signed")`.

    Example:
        >>> chat = [{"role": "assistant", "content": "\\boxed{0.5}"}]
        >>> math_accuracy_reward(["\\boxed{7}", chat], ["7", "\\frac12"])
        [1.0, 1.0]
    """
    return _BINARY_ACCURACY(completions, solution, **kwargs)


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
            found = extract_final_answer(text, self.think_delimiter)
            rewards.append(1.0 if found is not None and found[1] and found[0] else 0.0)
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
