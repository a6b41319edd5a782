"""A CPU-scale testbed in the papers' regime: a task where RL improves held-out accuracy and entropy collapses.

The task is the sum of `num_terms` single digits, written out step by step before the boxed answer:

    prompt      3+5+2+7+4=
    completion  3+5=8 8+2=10 10+7=17 17+4=21 \\boxed{21}<eos>

With 5 terms there are 100,000 distinct problems; a fixed set of held-out problems (`heldout_problems`) is never
trained on (`train_problems` excludes it), and every completion has >= 20 tokens of intermediate steps before
`\\boxed{`. `build_testbed_model` warm-starts a small random-init Llama on it by SFT with label smoothing, which
leaves every next-token distribution broad: the greedy answer is almost always right, but sampled at temperature 1
a 30-token chain is right only a fraction of the time, so RL has room to sharpen it, and does so on problems it has
never seen. The tokenizer is the quickstart toy's (`ce_gppo_trl.toy.build_tokenizer`); the quickstart's toy model is
untouched.

Example:
    >>> from ce_gppo_trl.testbed import build_testbed_model, heldout_problems, train_problems
    >>> model_dir = build_testbed_model("testbed-model")  # doctest: +SKIP
    >>> heldout_problems(2)[0]  # doctest: +SKIP
    {'prompt': '1+7+4+0+3=', 'solution': '15'}
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from . import toy
from .toy import BOXED, build_tokenizer, reuse_build, save_build, sft_batch, tiny_llama, train_sft

logger = logging.getLogger(__name__)

BUILD_MARKER = "testbed_build.json"
HELDOUT_SEED = 1_000_000  # the held-out stream; training streams use their own seeds and skip these prompts


def random_problem(rng: random.Random, num_terms: int = 5) -> dict[str, str]:
    """One problem `d1+d2+...=` with single digits, as `prompt` and `solution` strings."""
    terms = [rng.randint(0, 9) for _ in range(num_terms)]
    return {"prompt": "+".join(map(str, terms)) + "=", "solution": str(sum(terms))}


def scratchpad(prompt: str) -> str:
    """The completion taught by SFT: each partial sum as an equation, then the boxed total (EOS added by caller).

    Example:
        >>> scratchpad("3+5+2+7+4=")
        '3+5=8 8+2=10 10+7=17 17+4=21 \\\\boxed{21}'
    """
    terms = [int(t) for t in prompt.rstrip("=").split("+")]
    steps, total = [], terms[0]
    for term in terms[1:]:
        steps.append(f"{total}+{term}={total + term}")
        total += term
    return " ".join(steps) + f" {BOXED}{total}}}"


def heldout_problems(num_problems: int = 256, num_terms: int = 5) -> Dataset:
    """The first `num_problems` distinct problems of a fixed stream: the same for every seed and run.

    Example:
        >>> len(set(heldout_problems(200)["prompt"]))
        200
    """
    rng, seen, rows = random.Random(HELDOUT_SEED + num_terms), set(), []
    while len(rows) < num_problems:
        row = random_problem(rng, num_terms)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    return Dataset.from_list(rows)


def train_problems(num_examples: int, seed: int, *, exclude: set[str] | None = None, num_terms: int = 5) -> Dataset:
    """`num_examples` random problems from the stream `seed`, none of whose prompts is in `exclude`.

    Example:
        >>> held_out = set(heldout_problems(200)["prompt"])
        >>> held_out.isdisjoint(train_problems(1000, seed=0, exclude=held_out)["prompt"])
        True
    """
    rng, rows = random.Random(seed), []
    exclude = exclude or set()
    while len(rows) < num_examples:
        row = random_problem(rng, num_terms)
        if row["prompt"] not in exclude:
            rows.append(row)
    return Dataset.from_list(rows)


def boxed_answer(completion: str) -> str | None:
    """The content of the last `\\boxed{...}` of a completion, or None.

    Example:
        >>> boxed_answer("1+2=3 \\\\boxed{3}")
        '3'
    """
    start = completion.rfind(BOXED)
    if start < 0:
        return None
    end = completion.find("}", start + len(BOXED))
    return None if end < 0 else completion[start + len(BOXED) : end]


@torch.no_grad()
def sample_correct(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    dataset: Dataset,
    *,
    k: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 512,
) -> torch.Tensor:
    """`(len(dataset), k)` booleans: whether each of `k` samples per problem ends with the right boxed answer.

    `temperature=0` decodes greedily (then all `k` columns are equal). Sampling is pure (`top_k=0`, no top-p), as in
    RL training; seed torch first for a reproducible result. avg@k is the mean of the result, pass@k the mean of its
    row-wise any.

    Example:
        >>> correct = sample_correct(model, tokenizer, heldout_problems(200), k=8)  # doctest: +SKIP
        >>> avg_at_k, pass_at_k = correct.float().mean().item(), correct.any(1).float().mean().item()  # doctest: +SKIP
    """
    was_training = model.training
    model.eval()
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    prompts = [p for p in dataset["prompt"] for _ in range(k)]
    solutions = [s for s in dataset["solution"] for _ in range(k)]
    correct = []
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += [boxed_answer(t) == s for t, s in zip(texts, solutions[start : start + batch_size], strict=True)]
    model.train(was_training)
    return torch.tensor(correct).view(len(dataset), k)


def build_testbed_model(
    output_dir: str,
    *,
    seed: int = 0,
    sft_steps: int = 600,
    sft_batch_size: int = 64,
    learning_rate: float = 3e-3,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_terms: int = 5,
    label_smoothing: float = 0.05,
    heldout: int = 256,
    eval_k: int = 4,
) -> str:
    """Build, warm-start and save the testbed model and tokenizer to `output_dir`; return `output_dir`.

    A complete directory built with the same arguments is reused as is; a directory built with other arguments is
    refused. The build happens in a sibling temporary directory renamed into place, so an interrupted build leaves
    nothing behind. The record in `testbed_build.json` holds the arguments, the SFT loss curve and the held-out
    accuracy greedy and sampled at T = 1 (avg@`eval_k`).

    Example:
        >>> model_dir = build_testbed_model("testbed-model", seed=0)  # doctest: +SKIP
    """
    build_args = {
        "seed": seed,
        "sft_steps": sft_steps,
        "sft_batch_size": sft_batch_size,
        "learning_rate": learning_rate,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_terms": num_terms,
        "label_smoothing": label_smoothing,
        "heldout": heldout,
    }
    if read_build_record(output_dir) is not None:
        return reuse_build(output_dir, build_args, BUILD_MARKER, "testbed model")
    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=hidden_size, num_layers=num_layers, max_position_embeddings=96)
    held_out = heldout_problems(heldout, num_terms)
    exclude = set(held_out["prompt"])

    def batch_at(step: int) -> dict[str, torch.Tensor]:
        prompts = train_problems(sft_batch_size, seed=seed * 1_000_003 + step, exclude=exclude, num_terms=num_terms)
        return sft_batch(tokenizer, prompts["prompt"], [scratchpad(p) for p in prompts["prompt"]])

    losses = train_sft(
        model,
        batch_at,
        steps=sft_steps,
        learning_rate=learning_rate,
        label_smoothing=label_smoothing,
        log_every=100,
        name="testbed",
    )
    torch.manual_seed(seed)
    greedy = sample_correct(model, tokenizer, held_out, k=1, temperature=0.0).float().mean().item()
    sampled = sample_correct(model, tokenizer, held_out, k=eval_k, temperature=1.0).float().mean().item()
    seconds = time.perf_counter() - start
    logger.info("testbed model built in %.0fs: held-out greedy %.2f, sampled (T=1) %.2f", seconds, greedy, sampled)

    record = {
        **build_args,
        "sft_loss": losses,
        "accuracy_greedy": greedy,
        "accuracy_sampled": sampled,
        "build_seconds": seconds,
    }
    save_build(output_dir, model, tokenizer, record, BUILD_MARKER)
    return reuse_build(output_dir, build_args, BUILD_MARKER, "testbed model")


def read_build_record(output_dir: str) -> dict[str, Any] | None:
    """The record of a finished testbed build in `output_dir`, or None if there is none."""
    return toy.read_build_record(output_dir, BUILD_MARKER)
