"""The held-out evaluator of every study: `k` sampled completions per held-out prompt, scored by the plant's rule.

`evaluate` samples at a temperature (`top_k=0`, no top-p: the trainer's sampling; 0 decodes greedily) under its own
RNG stream (`torch.random.fork_rng` + `manual_seed(seed)`: training's stream is left untouched), scores every
completion with a `Score` the plant or study gives, and returns avg@k (the mean score) and pass@k (the mean over
prompts of the best of the `k` scores: for right/wrong scores, whether any sample is right).

Two sampling orders, each the one a study's recorded figures were made with (the order decides which samples the
seed draws): `grouped=False` sweeps the whole held-out set `k` times (`entropy_dynamics.py`, `controller.py`; as `k`
calls of `ce_gppo_trl.toy.evaluate_arithmetic`), `grouped=True` repeats each prompt `k` times in a row (`regime.py`;
as `ce_gppo_trl.testbed.sample_correct`). Either way `batch_size` prompts go to one `generate` call.

The scores (`Score`: tokenizer, completions' token ids, their rows' columns -> one float each):
- `exact_boxed`: the toy's rule, 1 when the completion is exactly `\\boxed{solution}` then EOS;
- `boxed_answer`: the testbed's rule, 1 when the boxed answer of the decoded completion is the solution;
- `reward_score(reward)`: a random-init plant's reward of the decoded completion and its prompt.

Example:
    >>> numbers = evaluate(model, tokenizer, held_out, exact_boxed, k=4, temperature=0.6, seed=7)  # doctest: +SKIP
    >>> numbers["avg"], numbers["pass"]  # doctest: +SKIP
    (0.41, 0.75)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Score = Callable[[Any, list[list[int]], dict[str, list[Any]]], list[float]]
"""(tokenizer, completion token ids, the held-out rows' columns, one row per completion) -> one score each."""


def exact_boxed(tokenizer: Any, completions: list[list[int]], rows: dict[str, list[Any]]) -> list[float]:
    """1 for a completion that is exactly `\\boxed{solution}` then EOS, else 0 (the toy's held-out accuracy)."""
    from ce_gppo_trl.toy import format_completion

    eos = tokenizer.eos_token_id
    return [
        float(eos in ids and tokenizer.decode(ids[: ids.index(eos)]) == format_completion(solution))
        for ids, solution in zip(completions, rows["solution"], strict=True)
    ]


def boxed_answer(tokenizer: Any, completions: list[list[int]], rows: dict[str, list[Any]]) -> list[float]:
    """1 for a completion whose boxed answer is the solution, else 0 (the testbed's held-out accuracy)."""
    from ce_gppo_trl.testbed import boxed_answer as answer

    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return [float(answer(text) == solution) for text, solution in zip(texts, rows["solution"], strict=True)]


def reward_score(reward: Callable[..., list[float]]) -> Score:
    """The score of a plant whose reward is the task: `reward(completions, prompts=...)` of the decoded completions."""

    def score(tokenizer: Any, completions: list[list[int]], rows: dict[str, list[Any]]) -> list[float]:
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        return [float(value) for value in reward(texts, prompts=rows["prompt"])]

    return score


def evaluate(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    score: Score,
    *,
    k: int,
    temperature: float,
    seed: int,
    max_new_tokens: int = 8,
    batch_size: int = 256,
    grouped: bool = False,
) -> dict[str, float]:
    """avg@k and pass@k of `model` on `dataset` (columns `prompt` and what `score` reads), sampled under
    `manual_seed(seed)` in a forked RNG stream; `grouped` picks the sampling order (module docstring)."""
    import torch

    columns = {name: list(dataset[name]) for name in dataset.column_names}
    n = len(columns["prompt"])
    if grouped:
        order = [[i for i in range(n) for _ in range(k)]]
    else:
        order = [list(range(n)) for _ in range(k)]
    was_training = model.training
    model.eval()
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    sweeps = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for indices in order:
            scores = []
            for start in range(0, len(indices), batch_size):
                rows = {
                    name: [values[i] for i in indices[start : start + batch_size]] for name, values in columns.items()
                }
                inputs = tokenizer(rows["prompt"], return_tensors="pt", padding=True)
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **sampling,
                )
                scores += score(tokenizer, output[:, inputs["input_ids"].shape[1] :].tolist(), rows)
            sweeps.append(scores)
    model.train(was_training)
    flat = [s for sweep in sweeps for s in sweep]
    per_prompt = [flat[i * k : (i + 1) * k] for i in range(n)] if grouped else list(zip(*sweeps, strict=True))
    # avg@k as the mean of the sweeps' means (one sweep when grouped), as the studies' figures were averaged
    return {
        "avg": statistics.fmean(statistics.fmean(sweep) for sweep in sweeps),
        "pass": statistics.fmean(max(scores) for scores in per_prompt),
    }
