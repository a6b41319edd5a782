"""Paired micro-experiments on the trainer's own loss: freeze the weights, the optimizer state and a rollout batch,
apply the batch's updates once per arm with `trainer.compute_loss`, and measure what each arm did to the entropy.

An arm is a second `CEGPPOTrainer` over the same model object with the arm's config overrides (`arm_trainer`): its
`compute_loss` is the library's loss path, as in training, and its optimizer is the one `Trainer.create_optimizer`
builds, loaded with the frozen optimizer state, and its learning-rate scheduler the one `create_scheduler` builds,
at the frozen step. One update (`update`) is what `Trainer.training_step` plus the optimizer step of the training
loop do: loss, backward, gradient clipping at `max_grad_norm`, `optimizer.step()`, `lr_scheduler.step()` (so a
batch's updates during a warm-up each get their own rate, as in training). Nothing here re-implements the loss.

Example:
    >>> frozen = freeze(trainer)  # doctest: +SKIP
    >>> overrides = {**fields, **NO_DIAGNOSTICS, "ce_gppo_beta1": 1.0}  # the run's fields plus the arm's
    >>> args = grid.parse(plant, overrides, seed=0, output_dir=d)[1]  # doctest: +SKIP
    >>> arm = arm_trainer(trainer, args)  # doctest: +SKIP
    >>> restore(trainer, frozen, arm)  # doctest: +SKIP
    >>> stats = [update(arm, batch) for batch in trainer_batches]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NO_DIAGNOSTICS = {"entropy_attribution_steps": 0, "entropy_diagnostics": False, "save_strategy": "no"}
"""An arm trainer's overrides beside the arm's: it applies updates, it does not attribute them or save."""


@dataclasses.dataclass
class Frozen:
    """The model's weights, the optimizer's state and the learning-rate scheduler's at one moment."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None = None


def inner_optimizer(trainer: Any) -> Any:
    """The torch optimizer (accelerate wraps the training loop's in an `AcceleratedOptimizer`)."""
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)


def freeze(trainer: Any) -> Frozen:
    model = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    scheduler = trainer.lr_scheduler.state_dict() if trainer.lr_scheduler is not None else None
    return Frozen(model, copy.deepcopy(inner_optimizer(trainer).state_dict()), copy.deepcopy(scheduler))


def restore(trainer: Any, frozen: Frozen, into: Any = None) -> None:
    """Load the frozen weights into the (shared) model, and the frozen optimizer and scheduler states into `into`'s
    (default: `trainer`'s own)."""
    into = into or trainer
    trainer.model.load_state_dict(frozen.model)
    inner_optimizer(into).load_state_dict(copy.deepcopy(frozen.optimizer))
    if frozen.scheduler is not None and into.lr_scheduler is not None:
        into.lr_scheduler.load_state_dict(copy.deepcopy(frozen.scheduler))


@contextmanager
def kept_rng() -> Iterator[None]:
    """Python's, NumPy's and torch's random states as they were before the block."""
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def arm_trainer(base: Any, args: Any) -> Any:
    """A `CEGPPOTrainer` with `args` (an arm's config: `grid.parse` of the base run's fields plus the arm's) over
    `base`'s model object, data, rewards and tokenizer, its optimizer created, ready for `update`."""
    from transformers.trainer_callback import PrinterCallback

    from ce_gppo_trl import CEGPPOTrainer

    with kept_rng():  # Trainer.__init__ reseeds every generator: the base run's sampling must not notice
        trainer = CEGPPOTrainer(
            model=base.model,
            reward_funcs=base.reward_funcs,
            args=args,
            train_dataset=base.train_dataset,
            processing_class=base.processing_class,
        )
    trainer.remove_callback(PrinterCallback)
    trainer.create_optimizer()
    trainer.create_scheduler(base.state.max_steps or args.max_steps, inner_optimizer(trainer))
    # Set by the training loop, read by compute_loss to scale the token-mean normaliser to one accumulation window.
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    return trainer


def update(trainer: Any, inputs: dict[str, Any]) -> dict[str, float]:
    """One optimizer update on a frozen micro-batch through `trainer.compute_loss`, as the training loop applies it;
    returns the step's logged clip and ERC fractions (NaN where the loss logs none)."""
    import torch

    model = trainer.model
    model.train()
    metrics = trainer._metrics["train"]  # TRL's per-step metric buffer: what the step logs
    for values in metrics.values():
        values.clear()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    if trainer.args.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    optimizer = inner_optimizer(trainer)
    optimizer.step()
    if trainer.lr_scheduler is not None:
        trainer.lr_scheduler.step()
    optimizer.zero_grad()

    def last(key: str) -> float:
        return float(metrics[key][-1]) if metrics.get(key) else float("nan")

    return {
        "loss": float(loss.detach()),
        "clipped": last("clip_ratio/region_mean"),
        "erc_masked": last("entropy_ratio/clip_low_mean") + last("entropy_ratio/clip_high_mean"),
    }


@contextmanager
def scaled_lr(trainer: Any, factor: float) -> Iterator[None]:
    """The optimizer's learning rates times `factor` inside the block, the scheduler's too (its base rates, so that
    the rate each update gets is scaled), restored after it."""
    optimizer, scheduler = inner_optimizer(trainer), trainer.lr_scheduler
    saved = [group["lr"] for group in optimizer.param_groups]
    bases = list(scheduler.base_lrs) if scheduler is not None else None
    for group in optimizer.param_groups:
        group["lr"] *= factor
    if scheduler is not None:
        scheduler.base_lrs = [base * factor for base in bases]
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved, strict=True):
            group["lr"] = lr
        if scheduler is not None:
            scheduler.base_lrs = bases


def token_entropies(model: Any, batch: dict[str, Any], temperature: float = 1.0) -> Any:
    """The next-token entropy at each completion position of a batch, `(B, T)`, under `model`, no gradient."""
    import torch

    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    width = batch["completion_ids"].size(1)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -width - 1 : -1].float()
        log_probs = (logits / temperature).log_softmax(-1)
        return -(log_probs.exp() * log_probs).sum(-1)


def mean_entropy(model: Any, batch: dict[str, Any], temperature: float = 1.0) -> float:
    """The mean next-token entropy over a batch's completion tokens."""
    mask = batch["completion_mask"].float()
    return float((token_entropies(model, batch, temperature) * mask).sum() / mask.sum())


def probe_batch(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, seed: int) -> dict[str, Any]:
    """Completions sampled once (T = 1) from `model` on `prompts`, as a teacher-forcing batch, masked by
    `completion_mask`."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues each prompt
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    tokenizer.padding_side = side
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(
            **inputs,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    completion = out[:, inputs["input_ids"].shape[1] :]
    return {
        "prompt_ids": inputs["input_ids"],
        "prompt_mask": inputs["attention_mask"],
        "completion_ids": completion,
        "completion_mask": completion_mask(completion, tokenizer.eos_token_id, tokenizer.pad_token_id).long(),
    }


def completion_mask(completion: Any, eos: int, pad: int | None) -> Any:
    """The sampled tokens up to and including each row's first EOS, as TRL's completion mask counts them, without
    pad tokens sampled before it. Right for a tokenizer whose pad is its EOS (SmolLM2: `generate` fills finished rows
    with EOS, which count only up to the first)."""
    is_eos = completion == eos
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    return ~after_eos & ((completion != pad) | is_eos)


def erc_masked_by_entropy_bin(
    model: Any, batch: dict[str, Any], band: tuple[float, float], bins: int = 5, temperature: float = 1.0
) -> list[float]:
    """The share of a micro-batch's completion tokens outside ERC's band under `model`, per bin of equal token count
    by the old entropy (`batch["old_entropies"]`, lowest first); uses the library's own `entropy_ratio_mask`."""
    from ce_gppo_trl.losses import entropy_ratio_mask

    tokens = batch["completion_mask"].bool()
    old = batch["old_entropies"]
    masked = (~entropy_ratio_mask(token_entropies(model, batch, temperature), old, *band))[tokens].float()
    order = old[tokens].argsort()
    return [float(chunk.mean()) for chunk in masked[order].chunk(bins)]
