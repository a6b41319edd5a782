"""Entropy attribution: which tokens moved the entropy, measured through the optimizer's real update.

The first-order change of the mean entropy `H` of a batch under a parameter update `delta_theta` is
`grad_theta H . delta_theta`. With `delta_theta` the change the optimizer really applied (read off the weights, so
exact for any optimizer), this predicts the realised change (benchmarks/RESULTS.md, sections 4 and 14), which the
per-token logit-space picture of `ce_gppo_trl.diagnostics` does not.

For Adam / AdamW the update of one step is linear in this step's gradient once its preconditioner is fixed:

    delta_theta = -lr / (1 - beta1^t) * (beta1 * m_prev + (1 - beta1) * c * g) / (sqrt(v_t / (1 - beta2^t)) + eps)
                  - lr * wd * theta                      (AdamW; Adam adds wd * theta to g instead)

with `v_t` the second moment after the step (it already holds this step's `g^2`), `m_prev` the first moment before
it, `c` the gradient-clipping scale. Splitting `g` over disjoint token groups (`attribution_groups`) splits the
prediction into parts that add up to it exactly (`adam_step_parts`): one per group, the momentum carried from
earlier steps, weight decay, and `other`, the rest of the step's gradient (zero-advantage tokens, an entropy term in
the loss, a MoE aux loss).

`EntropyAttribution` is the trainer glue: `CEGPPOTrainer` attaches it when `entropy_attribution_steps > 0`.

Example:
    >>> import torch
    >>> groups = attribution_groups(
    ...     torch.log(torch.tensor([[0.9, 0.05]])), torch.ones(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    >>> [name for name, m in groups.items() if m.any()]
    ['E1', 'E4']
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
from transformers import TrainerCallback

from .diagnostics import QUADRANTS, TOKEN_GROUPS, entropy_quadrants

logger = logging.getLogger(__name__)

# The parts of the Adam / AdamW prediction besides the token groups; `unattributed` is the whole prediction of an
# optimizer this module cannot decompose.
OTHER_PARTS = ("momentum", "weight_decay", "other", "unattributed")
ATTRIBUTION_PARTS = TOKEN_GROUPS + OTHER_PARTS
# The file in a checkpoint folder that holds EntropyGainMeter's moment of the entropy term's gradients.
GAIN_METER_STATE = "entropy_gain_meter.pt"
# Steps EntropyGainMeter measures every step before it measures every `entropy_controller_measure_steps`.
GAIN_METER_WARMUP_STEPS = 8


def attribution_groups(
    logps: torch.Tensor,
    entropies: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: torch.Tensor | None = None,
    clip_high: torch.Tensor | None = None,
    dual_clip: torch.Tensor | None = None,
    erc_masked: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Disjoint float masks `(B, T)` of the completion tokens, one per entry of `TOKEN_GROUPS` that applies.

    The first group whose mask holds takes a token: `erc_masked`, `dual_clip`, `clip_low` (NA&LP), `clip_high`
    (PA&LP), then E1..E4 (`ce_gppo_trl.diagnostics.entropy_quadrants`). `A = 0` tokens are in none. Groups whose mask
    is `None` are left out.

    Example:
        >>> logps = torch.log(torch.tensor([[0.9, 0.05, 0.9]]))
        >>> g = attribution_groups(logps, torch.ones(1, 3), torch.tensor([[1.0, -1.0, -1.0]]), torch.ones(1, 3),
        ...                        clip_low=torch.tensor([[False, True, False]]))
        >>> {name: m.tolist() for name, m in g.items() if m.any()}
        {'clip_low': [[0.0, 1.0, 0.0]], 'E1': [[1.0, 0.0, 0.0]], 'E3': [[0.0, 0.0, 1.0]]}
    """
    shape = logps.shape
    taken = ~mask.bool().expand(shape)
    groups: dict[str, torch.Tensor] = {}
    named = {"erc_masked": erc_masked, "dual_clip": dual_clip, "clip_low": clip_low, "clip_high": clip_high}
    quadrants = entropy_quadrants(logps.detach(), entropies.detach(), advantages)
    named.update({name: quadrants[i] for i, name in enumerate(QUADRANTS)})
    for name in TOKEN_GROUPS:
        if named[name] is None:
            continue
        members = named[name].expand(shape) & ~taken
        taken = taken | members
        groups[name] = members.to(logps.dtype)
    return groups


def adam_step_parts(
    grad_entropy: torch.Tensor,
    group_grads: dict[str, torch.Tensor],
    grad: torch.Tensor,
    param_before: torch.Tensor,
    exp_avg_before: torch.Tensor,
    exp_avg_sq_after: torch.Tensor,
    *,
    step: float,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    clip_scale: float = 1.0,
) -> dict[str, float]:
    """First-order entropy change `grad_entropy . delta_theta` of one Adam / AdamW step on one parameter tensor, split
    into parts that add up to it (float64 sums).

    Args:
        grad_entropy: gradient of the mean entropy w.r.t. this parameter.
        group_grads: per token group, its share of this step's loss gradient, before clipping.
        grad: the gradient the optimizer steps on (after clipping: `c` times the raw gradient).
        param_before, exp_avg_before: the parameter and Adam's first moment before the step (zeros on step 1).
        exp_avg_sq_after: the second moment after the step (AMSGrad: its running maximum).
        step, lr, betas, eps, weight_decay, decoupled_weight_decay: the step count after the step and the param
            group's settings (`decoupled_weight_decay` is AdamW's).
        clip_scale: the gradient-clipping scale `c` applied to the raw gradient.

    Returns `{group: ..., "other": ..., "momentum": ..., "weight_decay": ...}`; `other` is the part of `grad` that is
    not `c * sum(group_grads)`.

    Example:
        >>> one = torch.ones(1)  # step 1, g = 1: m = 0.1, v = 0.001, so Adam moves the weight by -lr
        >>> parts = adam_step_parts(one, {"E1": one}, one, one, 0 * one, 0.001 * one, step=1, lr=0.1,
        ...                         betas=(0.9, 0.999), eps=0.0, weight_decay=0.0, decoupled_weight_decay=True)
        >>> round(parts["E1"], 6), parts["other"], parts["momentum"]
        (-0.1, 0.0, 0.0)
    """
    beta1, beta2 = betas
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    denom = (exp_avg_sq_after.sqrt() / math.sqrt(bias2)).add_(eps).double()
    # d(entropy) / d(numerator of Adam's step): the preconditioned direction the numerator is dotted with.
    weight = grad_entropy.double() * (-lr / bias1) / denom
    parts = {}
    grouped = torch.zeros_like(weight)
    for name, group_grad in group_grads.items():
        group_grad = group_grad.double()
        grouped += group_grad
        parts[name] = (1 - beta1) * clip_scale * float((weight * group_grad).sum())
    parts["other"] = (1 - beta1) * float((weight * (grad.double() - clip_scale * grouped)).sum())
    parts["momentum"] = beta1 * float((weight * exp_avg_before.double()).sum())
    theta = param_before.double()
    if decoupled_weight_decay:
        parts["weight_decay"] = -lr * weight_decay * float((grad_entropy.double() * theta).sum())
    else:
        parts["weight_decay"] = (1 - beta1) * weight_decay * float((weight * theta).sum())
    return parts


def reduced_over_processes(
    accelerator: Any, grads: list[torch.Tensor], count: float | None, params: list[torch.Tensor]
) -> list[torch.Tensor]:
    """`grads` summed over every process in one all-reduce, divided by the summed `count` (a mean over every
    process's tokens) or, with `count=None`, by the process count (DDP's average); views of one float32 buffer,
    shaped like `params`."""
    extra = 0.0 if count is None else count
    flat = torch.cat([g.flatten() for g in grads] + [torch.tensor([extra], device=params[0].device)])
    flat = accelerator.reduce(flat, reduction="sum")
    flat.div_(accelerator.num_processes if count is None else max(float(flat[-1]), 1.0))
    out, offset = [], 0
    for p in params:
        out.append(flat[offset : offset + p.numel()].view(p.shape))
        offset += p.numel()
    return out


def _adam_like(optimizer: torch.optim.Optimizer) -> bool:
    """torch's Adam / AdamW (AdamW is Adam with decoupled weight decay), whose step `adam_step_parts` mirrors."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    return not any(group.get("maximize") for group in optimizer.param_groups)


class EntropyAttribution(TrainerCallback):
    """Logs `entropy_attribution/*` every `every` optimizer steps of a `CEGPPOTrainer` (trainer glue, see the module).

    The trainer calls `collect` from its loss for each micro-batch of an attributed step and `record_grad_norm` from
    its gradient clipping; `on_pre_optimizer_step` / `on_optimizer_step` bracket the step. Nothing it does touches
    `.grad`, the optimizer state or the RNG streams, so training is bit-for-bit the same with it on.

    Memory, on attributed steps, in float32 copies of the trainable parameters (P): the gradient of the entropy
    (1 P), one per token group that received gradient on this process (up to 8 P: E1..E4, NA&LP / PA&LP clipped,
    dual-clipped, ERC-masked; 4 to 6 P in typical runs), and the weights and Adam's first moment before the step
    (2 P): `3 + groups` P, at most 11 P, and 1 P more for a moment while the entropy gradient is all-reduced
    (`tests/test_attribution.py` counts them). Steps that are not attributed hold none.
    """

    def __init__(self, trainer: Any, every: int):
        self.trainer, self.every = trainer, every
        self._warned_optimizer = False
        self._reset()

    def _reset(self) -> None:
        self.entropy_grads: list[torch.Tensor] | None = None  # sum over tokens of grad H, this process's micro-batches
        self.group_grads: dict[str, list[torch.Tensor] | None] = {}  # None: no gradient from this group yet
        self.batches: list[dict[str, Any]] = []
        self.before: dict[str, Any] | None = None
        self.grad_norm: float | None = None

    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.trainer.model.parameters() if p.requires_grad]

    def wants(self) -> bool:
        """Whether the step being computed (`global_step + 1`) is one to attribute."""
        return (self.trainer.state.global_step + 1) % self.every == 0

    def collect(
        self,
        loss: torch.Tensor,
        per_token_logps: torch.Tensor,
        entropies: torch.Tensor,
        mask: torch.Tensor,
        groups: dict[str, torch.Tensor],
        forward: dict[str, Any],
    ) -> None:
        """Add one micro-batch: the gradient of its entropy sum, each group's share of the loss gradient, and the
        inputs of the forward pass to repeat after the step. Every gradient is taken with `torch.autograd.grad` on
        the loss's graph (kept for the trainer's own backward), so `.grad` is untouched."""
        if not entropies.requires_grad:
            raise RuntimeError(
                "entropy_attribution_steps needs the entropies of the training forward pass to carry a gradient; "
                "this model's forward returned them detached."
            )
        params = self.params()
        mask = mask.to(entropies.dtype)
        entropy_sum = (entropies * mask).sum()
        grads = torch.autograd.grad(entropy_sum, params, retain_graph=True, allow_unused=True)
        self._add(grads, params, "entropy")
        # d loss / d log p per token: the loss's whole gradient through each token's log-prob (policy term, KL and
        # NLL terms alike), split by group with a backward per non-empty group.
        (grad_logps,) = torch.autograd.grad(loss, per_token_logps, retain_graph=True, allow_unused=True)
        for name, members in groups.items():
            weights = None if grad_logps is None else (grad_logps * members).detach()
            if weights is None or not weights.any():
                self.group_grads.setdefault(name, None)  # named, so every process logs it; no zero copy held
                continue
            part = (weights * per_token_logps).sum()
            self._add(torch.autograd.grad(part, params, retain_graph=True, allow_unused=True), params, name)
        entropy_sum = float(entropy_sum.detach())
        self.batches.append({**forward, "mask": mask.detach(), "entropy_sum": entropy_sum, "count": float(mask.sum())})

    def _add(self, grads: tuple[torch.Tensor | None, ...], params: list[torch.Tensor], name: str) -> None:
        current = self.entropy_grads if name == "entropy" else self.group_grads.get(name)
        if current is not None:  # in place: one copy held per name
            for total, grad in zip(current, grads, strict=True):
                if grad is not None:
                    total.add_(grad.detach().float())
            return
        grads = [
            torch.zeros_like(p, dtype=torch.float32) if g is None else g.detach().float()
            for g, p in zip(grads, params, strict=True)
        ]
        if name == "entropy":
            self.entropy_grads = grads
        else:
            self.group_grads[name] = grads

    def record_grad_norm(self, norm: Any) -> None:
        if self.batches:
            self.grad_norm = float(norm)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.batches:
            return
        optimizer = getattr(self.trainer.optimizer, "optimizer", self.trainer.optimizer)  # accelerate's wrapper
        params = self.params()
        states = [optimizer.state.get(p, {}) for p in params]
        # The gradient the optimizer steps on is read at on_optimizer_step, still in `.grad` (zeroed after it).
        self.before = {
            "optimizer": optimizer,
            "theta": [p.detach().clone() for p in params],
            "exp_avg": [
                s["exp_avg"].clone() if "exp_avg" in s else torch.zeros_like(p)
                for s, p in zip(states, params, strict=True)
            ],
        }

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.before is None or self.trainer.accelerator.optimizer_step_was_skipped:  # fp16 overflow: no update
            self._reset()
            return
        try:
            self._log_step(args)
        finally:
            self._reset()

    def _log_step(self, args: Any) -> None:
        trainer = self.trainer
        accelerator = trainer.accelerator
        params = self.params()
        share = 1.0 / accelerator.num_processes  # DDP averages gradients: local parts are summed over processes
        count_local = sum(float(b["count"]) for b in self.batches)
        entropy_before = sum(b["entropy_sum"] for b in self.batches)
        entropy_after = self._entropy_after()
        # grad of the mean entropy over every process's tokens: the all-reduced sums over the global token count, in
        # float32 whatever the weights' dtype (views of one buffer, no further copy).
        device = params[0].device
        grad_entropy = reduced_over_processes(accelerator, self.entropy_grads, count_local, params)
        self.entropy_grads = None
        theta_after = [p.detach() for p in params]
        predicted = sum(
            float((g.double() * (a.double() - b.double())).sum())
            for g, a, b in zip(grad_entropy, theta_after, self.before["theta"], strict=True)
        )
        parts = self._parts(grad_entropy, params, share)
        names = sorted(parts)  # one order on every process, whichever groups it saw
        local = [entropy_before, entropy_after, count_local] + [parts[n] for n in names]
        totals = accelerator.reduce(torch.tensor(local, dtype=torch.float64, device=device), reduction="sum").tolist()
        metrics = trainer._metrics["train"]
        denominator = max(totals[2], 1.0)
        metrics["entropy_attribution/realised"].append((totals[1] - totals[0]) / denominator)
        metrics["entropy_attribution/predicted"].append(predicted)
        for name, value in zip(names, totals[3:], strict=True):
            metrics[f"entropy_attribution/part/{name}"].append(value)

    def _parts(self, grad_entropy: list[torch.Tensor], params: list[torch.Tensor], share: float) -> dict[str, float]:
        """Local parts (this process's token groups; the global terms times `share`), to sum over processes."""
        optimizer = self.before["optimizer"]
        if not _adam_like(optimizer):
            if not self._warned_optimizer:
                logger.warning(
                    f"entropy_attribution_steps: {type(optimizer).__name__} is not torch's Adam / AdamW, whose step "
                    "the attribution decomposes; entropy_attribution/part/unattributed carries the whole prediction."
                )
                self._warned_optimizer = True
            delta = [a.detach().double() - b.double() for a, b in zip(params, self.before["theta"], strict=True)]
            total = sum(float((g.double() * d).sum()) for g, d in zip(grad_entropy, delta, strict=True))
            return {"unattributed": share * total}
        settings = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        clip_scale = 1.0
        max_norm = self.trainer.args.max_grad_norm
        if max_norm and max_norm > 0 and self.grad_norm is not None:
            # torch.nn.utils.clip_grad_norm_'s scale.
            clip_scale = min(1.0, max_norm / (self.grad_norm + 1e-6))
        parts: dict[str, float] = {}
        for i, p in enumerate(params):
            group = settings.get(id(p))
            if group is None:  # a trainable parameter the optimizer does not step
                continue
            opt_state = optimizer.state[p]
            exp_avg_sq = opt_state["max_exp_avg_sq"] if group.get("amsgrad") else opt_state["exp_avg_sq"]
            grad = torch.zeros_like(p) if p.grad is None else p.grad.detach()
            local = adam_step_parts(
                grad_entropy[i],
                {name: grads[i] * share for name, grads in self.group_grads.items() if grads is not None},
                grad * share,
                self.before["theta"][i] * share,
                self.before["exp_avg"][i],
                exp_avg_sq,
                step=float(opt_state["step"]),
                lr=float(group["lr"]),
                betas=tuple(float(b) for b in group["betas"]),
                eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]),
                decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
                clip_scale=clip_scale,
            )
            local["momentum"] *= share
            local.update({name: 0.0 for name, grads in self.group_grads.items() if grads is None})
            for name, value in local.items():
                parts[name] = parts.get(name, 0.0) + value
        return parts

    @torch.no_grad()
    def _entropy_after(self) -> float:
        """Sum of the entropies of this process's attributed tokens under the updated weights (same forward as the
        loss, no gradient, RNG streams forked so that dropout-free or not, training draws the same numbers)."""
        trainer, total = self.trainer, 0.0
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            for batch in self.batches:
                forward = {k: v for k, v in batch.items() if k not in ("mask", "entropy_sum", "count")}
                _, entropies, _ = trainer._get_per_token_logps_and_entropies(
                    trainer.model, compute_entropy=True, **forward
                )
                total += float((entropies * batch["mask"]).sum())
        return total


class EntropyGainMeter(TrainerCallback):
    """Measures the entropy plant of the measured-gain controller (`ce_gppo_trl.controller.measured_update`) every
    `every` optimizer steps of a `CEGPPOTrainer`, logs it and hands it to the controller (`take`).

    - `gain = b = g_H . P g_c`: the entropy change per step per unit of Adam's first moment of the coefficient `c` of
      the loss term `-c * mean(H)` (`_bonus_entropy`), with `g_c` that term's gradient per unit `c` as the optimizer
      receives it (per micro-batch token means, over the accumulation steps, averaged over processes) and `P = lr *
      clip_scale / ((1 - beta1^t) * (sqrt(v_t / (1 - beta2^t)) + eps))` Adam's preconditioner at this step. With one
      micro-batch on one process `g_c = g_H` and `b = g_H . P g_H >= 0`; otherwise the two differ by the micro-batches'
      token counts only.
    - `predicted = g_H . delta_theta`: the first-order entropy change of the update the optimizer really applied (read
      off the weights).
    - `share = g_H . P' m_c`: the part of `predicted` that the entropy term made, through Adam's first moment of the
      term's own gradients `m_c <- beta1 m_c + (1 - beta1) clip c g_c` (a buffer beside Adam's, exact since Adam's
      moment is linear in the gradients; `P'` is `P` without the clip scale, which `m_c` holds). Gradients of
      different batches point different ways, so this share decays faster than Adam's average of the coefficients;
      the controller takes it out of `predicted` to get the drift `d = predicted - share`.

    `g_H` is the gradient of the mean entropy over every process's tokens of the step (the micro-batches' sums
    all-reduced over the global token count, as `EntropyAttribution` does), of the trainable parameters only (PEFT:
    the adapters). Logs `entropy_control/gain` and `entropy_control/predicted_change` on measured steps. Cost on
    measured steps: one more backward pass per micro-batch (`torch.autograd.grad` on the loss's graph, `.grad` and
    the optimizer untouched) and 3 float32 copies of the trainable parameters; on every step, `m_c` and the last
    measured `g_c` (2 copies, saved in checkpoints as `entropy_gain_meter.pt`). Between measurements
    (`entropy_controller_measure_steps` > 1) `m_c` takes the last measured `g_c` at the step's coefficient. Adam /
    AdamW only (checked when training starts); the trainer refuses it with DeepSpeed or FSDP (sharded parameters and
    states).
    """

    def __init__(self, trainer: Any, every: int):
        self.trainer, self.every = trainer, every
        self.measurement: tuple[float, float, float] | None = None
        self.term_moment: list[torch.Tensor] | None = None  # m_c, float32, one per trainable parameter
        self.term_grad: list[torch.Tensor] | None = None  # the last measured g_c (times its clip scale)
        self._reset()

    def _reset(self) -> None:
        self.entropy_sums: list[torch.Tensor] | None = None  # sum over tokens of grad H, this process
        self.term_grads: list[torch.Tensor] | None = None  # grad of the loss term's mean(H) / accumulation
        self.count = 0.0
        self.coefficient = 0.0
        self.theta_before: list[torch.Tensor] | None = None
        self.grad_norm: float | None = None

    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.trainer.model.parameters() if p.requires_grad]

    def save(self, folder: str) -> None:
        """Write `m_c` and the last `g_c` into a checkpoint folder (the same on every process)."""
        if self.term_moment is not None:
            state = {"moment": [m.cpu() for m in self.term_moment], "grad": [g.cpu() for g in self.term_grad]}
            torch.save(state, os.path.join(folder, GAIN_METER_STATE))

    def load(self, folder: str) -> None:
        """Restore `m_c` and the last `g_c` from a checkpoint folder written by `save`, if there is one."""
        path = os.path.join(folder, GAIN_METER_STATE)
        if os.path.exists(path):
            device = self.params()[0].device
            state = torch.load(path, weights_only=True)
            self.term_moment = [m.to(device) for m in state["moment"]]
            self.term_grad = [g.to(device) for g in state["grad"]]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = getattr(self.trainer.optimizer, "optimizer", self.trainer.optimizer)
        if not _adam_like(optimizer):
            raise ValueError(
                f"entropy_controller_law='measured' (or 'scaled_pi') needs torch's Adam or AdamW, whose "
                f"preconditioner the gain is measured through; this run's optimizer is {type(optimizer).__name__}. "
                "Set entropy_controller_law='pi' (the fixed-gain law) with this optimizer."
            )

    def wants(self) -> bool:
        """Whether the step being computed (`global_step + 1`) is measured: each of the first
        `GAIN_METER_WARMUP_STEPS` (Adam's first steps move its preconditioner most, and the controller's averages
        start from them), then every `every`."""
        step = self.trainer.state.global_step
        return step < GAIN_METER_WARMUP_STEPS or step % self.every == 0

    def collect(self, entropies: torch.Tensor, mask: torch.Tensor, accumulation: float, coefficient: float) -> None:
        """Add one micro-batch (the tokens of the loss's entropy term; `accumulation`: what the loss divides by;
        `coefficient`: the entropy term's coefficient `c` in this step's loss)."""
        params = self.params()
        mask = mask.to(entropies.dtype)
        grads = torch.autograd.grad((entropies * mask).sum(), params, retain_graph=True, allow_unused=True)
        grads = [
            torch.zeros_like(p, dtype=torch.float32) if g is None else g.detach().float()
            for g, p in zip(grads, params, strict=True)
        ]
        count = float(mask.sum())
        weight = 1.0 / (max(count, 1.0) * accumulation)  # _bonus_entropy's token mean, over the accumulation
        if self.entropy_sums is None:
            self.entropy_sums = grads
            self.term_grads = [g * weight for g in grads]
        else:
            for total, term, grad in zip(self.entropy_sums, self.term_grads, grads, strict=True):
                total.add_(grad)
                term.add_(grad, alpha=weight)
        self.count += count
        self.coefficient = float(coefficient)

    def record_grad_norm(self, norm: Any) -> None:
        if self.entropy_sums is not None:
            self.grad_norm = float(norm)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.entropy_sums is not None:
            self.theta_before = [p.detach().float().clone() for p in self.params()]

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            if self.trainer.accelerator.optimizer_step_was_skipped:
                return
            if self.theta_before is not None:
                self.measurement = self._measure(args)
                metrics = self.trainer._metrics["train"]
                metrics["entropy_control/gain"].append(self.measurement[0])
                metrics["entropy_control/predicted_change"].append(self.measurement[1])
            elif self.term_moment is not None:
                # An unmeasured step: the term's new gradient is taken as the last one measured, at this step's
                # coefficient (the entropy gradients of nearby batches are alike enough for a few steps).
                beta1 = float(self._optimizer().param_groups[0]["betas"][0])
                coefficient = float(self.trainer.entropy_control_coef)
                for moment, grad in zip(self.term_moment, self.term_grad, strict=True):
                    moment.mul_(beta1).add_(grad, alpha=(1 - beta1) * coefficient)
        finally:
            self._reset()

    def _optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.trainer.optimizer, "optimizer", self.trainer.optimizer)  # accelerate's wrapper

    def take(self) -> tuple[float, float, float] | None:
        """The last step's `(gain, predicted, share)`, or None if it was not measured; cleared once taken."""
        measurement, self.measurement = self.measurement, None
        return measurement

    def _measure(self, args: Any) -> tuple[float, float, float]:
        params = self.params()
        accelerator = self.trainer.accelerator
        grad_entropy = reduced_over_processes(accelerator, self.entropy_sums, self.count, params)
        grad_term = reduced_over_processes(accelerator, self.term_grads, None, params)  # DDP averages gradients
        self.entropy_sums = self.term_grads = None
        optimizer = self._optimizer()
        settings = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        clip_scale = 1.0
        if args.max_grad_norm and args.max_grad_norm > 0 and self.grad_norm is not None:
            clip_scale = min(1.0, args.max_grad_norm / (self.grad_norm + 1e-6))  # torch's clip_grad_norm_ scale
        if self.term_moment is None:
            self.term_moment = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.term_grad = [g.mul(clip_scale) for g in grad_term]
        gain = predicted = share = 0.0
        for p, before, g_h, g_c, moment in zip(
            params, self.theta_before, grad_entropy, grad_term, self.term_moment, strict=True
        ):
            g_h = g_h.double()
            predicted += float((g_h * (p.detach().double() - before.double())).sum())
            group = settings.get(id(p))
            if group is None or p not in optimizer.state:
                continue
            opt_state = optimizer.state[p]
            beta1, beta2 = (float(b) for b in group["betas"])
            moment.mul_(beta1).add_(g_c, alpha=(1 - beta1) * clip_scale * self.coefficient)
            step = float(opt_state["step"])
            exp_avg_sq = opt_state["max_exp_avg_sq"] if group.get("amsgrad") else opt_state["exp_avg_sq"]
            denom = (exp_avg_sq.double().sqrt() / math.sqrt(1 - beta2**step)).add_(float(group["eps"]))
            weight = g_h * (float(group["lr"]) / (1 - beta1**step)) / denom
            gain += clip_scale * float((weight * g_c.double()).sum())
            share += float((weight * moment.double()).sum())
        return gain, predicted, share
