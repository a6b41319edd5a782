"""A tiny offline model and arithmetic task, so that the quickstart runs on CPU with no network.

`build_toy_model` builds a character-level tokenizer and a small random-init Llama, teaches it single-digit
addition by a short supervised warm start, and saves both as an ordinary Hugging Face model directory. The warm
start uses label smoothing on purpose: the model's most likely answer is almost always right (greedy accuracy ~1.0),
but every next-token distribution stays broad, so sampled at temperature 1 it is right only about a third of the
time. That is the slack RL removes in the quickstart: the reward rises from ~0.4 to ~0.8 within minutes.

Example:
    >>> from ce_gppo_trl.toy import build_toy_model, make_arithmetic_dataset
    >>> # the build takes about a minute on 2 CPU cores, then the directory is reused
    >>> model_dir = build_toy_model("toy-model")  # doctest: +SKIP
    >>> make_arithmetic_dataset(2, seed=0)[0]  # doctest: +SKIP
    {'prompt': '6+6=', 'solution': '12'}
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BOXED = "\\boxed{"
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>"]
# `\boxed{` is one token so that a completion is `\boxed{`, the answer digits one by one, `}`, EOS.
VOCAB = [*SPECIAL_TOKENS, BOXED, *"0123456789", *"+-*=(){} "]
# Written last into a model directory: its presence means the build finished, its content is the build's arguments.
BUILD_MARKER = "toy_build.json"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer for arithmetic, with `\\boxed{` as a single token.

    Encoding prepends `<bos>`; decoding with `skip_special_tokens=True` drops `<bos>`, `<eos>` and `<pad>`, which is
    how TRL's GRPOTrainer turns sampled ids into the completion string passed to the reward.

    Example:
        >>> tokenizer = build_tokenizer()
        >>> tokenizer.decode(tokenizer("12+7=\\\\boxed{19}")["input_ids"], skip_special_tokens=True)
        '12+7=\\\\boxed{19}'
    """
    vocab = {token: i for i, token in enumerate(VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    # Split into `\boxed{` or single characters, each kept as its own token.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"\\boxed\{|."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<pad>",
        padding_side="left",  # generation continues the prompt, so prompts are padded on the left
    )


def make_arithmetic_dataset(
    num_examples: int, seed: int = 0, *, max_operand: int = 9, operations: str = "+"
) -> Dataset:
    """Random problems `a op b =` with `a, b` in `[0, max_operand]`, as plain-string `prompt` and `solution` columns.

    The completion the model is taught is `\\boxed{<solution>}` then EOS, which
    `ce_gppo_trl.rewards.math_accuracy_reward` scores against `solution`.
    With `operations="+-"` answers may be negative.

    Example:
        >>> ds = make_arithmetic_dataset(100, seed=1)
        >>> ds.column_names
        ['prompt', 'solution']
    """
    rng = random.Random(seed)
    prompts, solutions = [], []
    for _ in range(num_examples):
        a, b, op = rng.randint(0, max_operand), rng.randint(0, max_operand), rng.choice(operations)
        prompts.append(f"{a}{op}{b}=")
        solutions.append(str(eval(f"{a}{op}{b}")))  # noqa: S307 - the expression is built from two ints here
    return Dataset.from_dict({"prompt": prompts, "solution": solutions})


def format_completion(solution: str) -> str:
    """The target completion text for an answer (EOS is appended by the caller as a token)."""
    return f"{BOXED}{solution}}}"


def sft_batch(
    tokenizer: PreTrainedTokenizerFast, prompts: list[str], completions: list[str]
) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`/`attention_mask` with `labels` on the completion and EOS only."""
    rows, labels = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        completion_ids.append(tokenizer.eos_token_id)
        rows.append(prompt_ids + completion_ids)
        labels.append([-100] * len(prompt_ids) + completion_ids)
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([row + [pad] * (width - len(row)) for row in rows]),
        "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows]),
        "labels": torch.tensor([label + [-100] * (width - len(label)) for label in labels]),
    }


@torch.no_grad()
def evaluate_arithmetic(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    dataset: Dataset,
    *,
    temperature: float = 1.0,
    batch_size: int = 256,
    max_new_tokens: int = 8,
) -> float:
    """Fraction of `dataset` problems whose sampled completion is exactly `\\boxed{<solution>}` then EOS.

    `temperature=0` decodes greedily; `temperature=1` is the RL sampling setting. Seed torch first for a
    reproducible number.

    Example:
        >>> accuracy = evaluate_arithmetic(model, tokenizer, make_arithmetic_dataset(200, seed=123))  # doctest: +SKIP
    """
    was_training = model.training
    model.eval()
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    correct = 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        inputs = tokenizer(batch["prompt"], return_tensors="pt", padding=True)
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        for ids, solution in zip(output[:, inputs["input_ids"].shape[1] :].tolist(), batch["solution"], strict=True):
            if tokenizer.eos_token_id in ids:
                completion = tokenizer.decode(ids[: ids.index(tokenizer.eos_token_id)])
                correct += completion == format_completion(solution)
    model.train(was_training)
    return correct / len(dataset)


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast, *, hidden_size: int, num_layers: int, max_position_embeddings: int
) -> PreTrainedModel:
    """A random-init Llama for `tokenizer` (4 heads, tied embeddings): the toy's and the testbed's model."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return AutoModelForCausalLM.from_config(config)


def save_random_model(
    path: str | os.PathLike, model_type: str = "llama", *, seed: int = 0, vocab_size: int | None = None, **fields: Any
) -> str:
    """Save a random-init causal LM (`model_type` with config `fields`) and the toy tokenizer to `path`; return it.

    `vocab_size` larger than the toy tokenizer's adds placeholder tokens to the tokenizer, so that a real
    architecture's embedding size can be timed with it.

    Example:
        >>> save_random_model("tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=1)  # doctest: +SKIP
    """
    tokenizer = build_tokenizer()
    vocab_size = vocab_size or len(tokenizer)
    if vocab_size > len(tokenizer):
        tokenizer.add_tokens([f"<t{i}>" for i in range(vocab_size - len(tokenizer))])
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **fields,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def train_sft(
    model: PreTrainedModel,
    batch_at: Callable[[int], dict[str, torch.Tensor]],
    *,
    steps: int,
    learning_rate: float,
    label_smoothing: float,
    log_every: int,
    name: str,
) -> list[float]:
    """Supervised warm start on `batch_at(step)` (an `sft_batch`) each step; returns the loss per step.

    Label smoothing keeps every next-token distribution broad: the mode is usually right while sampling at
    temperature 1 often is not, which is the slack RL sharpens.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)
    # Linear warm-up then cosine decay to 10% of the peak rate.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps))),
    )
    model.train()
    losses = []
    for step in range(steps):
        batch = batch_at(step)
        labels = batch.pop("labels")
        logits = model(**batch).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, label_smoothing=label_smoothing
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            logger.info("%s SFT step %d/%d: loss %.3f", name, step + 1, steps, loss.item())
    return losses


def build_toy_model(
    output_dir: str,
    *,
    seed: int = 0,
    sft_steps: int = 200,
    sft_batch_size: int = 64,
    learning_rate: float = 3e-3,
    hidden_size: int = 128,
    num_layers: int = 4,
    max_operand: int = 9,
    operations: str = "+",
    label_smoothing: float = 0.2,
    eval_examples: int = 500,
) -> str:
    """Build, warm-start and save the toy model and tokenizer to `output_dir`; return `output_dir`.

    A complete directory built with the same arguments is reused as is. The build happens in a sibling temporary
    directory renamed into place at the end, so an interrupted build never leaves a partial model behind.

    Example:
        >>> model_dir = build_toy_model("toy-model", seed=0)  # doctest: +SKIP
        >>> model = AutoModelForCausalLM.from_pretrained(model_dir)  # doctest: +SKIP
    """
    build_args = {
        "seed": seed,
        "sft_steps": sft_steps,
        "sft_batch_size": sft_batch_size,
        "learning_rate": learning_rate,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "max_operand": max_operand,
        "operations": operations,
        "label_smoothing": label_smoothing,
    }
    if read_build_record(output_dir, BUILD_MARKER) is not None:
        return reuse_build(output_dir, build_args, BUILD_MARKER, "toy model")

    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=hidden_size, num_layers=num_layers, max_position_embeddings=32)

    def batch_at(step: int) -> dict[str, torch.Tensor]:
        data = make_arithmetic_dataset(
            sft_batch_size, seed=seed * 1_000_003 + step, max_operand=max_operand, operations=operations
        )
        return sft_batch(tokenizer, data["prompt"], [format_completion(s) for s in data["solution"]])

    losses = train_sft(
        model,
        batch_at,
        steps=sft_steps,
        learning_rate=learning_rate,
        label_smoothing=label_smoothing,
        log_every=50,
        name="toy",
    )
    held_out = make_arithmetic_dataset(
        eval_examples, seed=seed + 10_000, max_operand=max_operand, operations=operations
    )
    greedy = evaluate_arithmetic(model, tokenizer, held_out, temperature=0.0)
    sampled = evaluate_arithmetic(model, tokenizer, held_out, temperature=1.0)
    logger.info(
        "toy model built in %.0fs: SFT loss %.3f -> %.3f, held-out accuracy greedy %.2f, sampled (T=1) %.2f",
        time.perf_counter() - start,
        losses[0],
        losses[-1],
        greedy,
        sampled,
    )

    record = {**build_args, "sft_loss": losses, "accuracy_greedy": greedy, "accuracy_sampled": sampled}
    save_build(output_dir, model, tokenizer, record, BUILD_MARKER)
    return reuse_build(output_dir, build_args, BUILD_MARKER, "toy model")


def save_build(
    output_dir: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, record: dict[str, Any], marker: str
) -> None:
    """Save a built model, its tokenizer and its build record (`marker`, written last) to `output_dir` atomically.

    Everything goes to a sibling temporary directory renamed into place at the end, so an interrupted build never
    leaves a partial model behind.
    """
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".build-", dir=parent)
    try:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
        with open(os.path.join(tmp_dir, marker), "w") as f:
            json.dump(record, f)
        if os.path.isdir(output_dir) and not os.listdir(output_dir):
            os.rmdir(output_dir)
        os.rename(tmp_dir, output_dir)
    except OSError:
        # Another process may have finished the same build first; its directory is as good as ours.
        if read_build_record(output_dir, marker) is None:
            raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def read_build_record(output_dir: str, marker: str = BUILD_MARKER) -> dict[str, Any] | None:
    """The record (`marker` file) of a finished build in `output_dir`, or None if there is none."""
    try:
        with open(os.path.join(output_dir, marker)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def reuse_build(output_dir: str, build_args: dict[str, Any], marker: str, what: str) -> str:
    """Return `output_dir` if it was built with `build_args`; refuse to silently hand back a different model."""
    recorded = read_build_record(output_dir, marker) or {}
    mismatched = {k: (recorded.get(k), v) for k, v in build_args.items() if recorded.get(k) != v}
    if mismatched:
        raise ValueError(
            f"{output_dir} holds a {what} built with other arguments (recorded, requested): {mismatched}; "
            "delete it or pass another output_dir"
        )
    logger.info("%s ready in %s", what, output_dir)
    return output_dir
