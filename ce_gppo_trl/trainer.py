"""`CEGPPOTrainer`: TRL's `GRPOTrainer` with CE-GPPO, the dual clip and Entropy Ratio Clipping.

The trainer reuses TRL's machinery (generation, rewards, advantages, vLLM, PEFT, logging) and is glue only: the
per-token losses and the clip bounds are `ce_gppo_trl.losses`, the metrics' one reduction `ce_gppo_trl.step_metrics`,
the rollout-side additions (NLL rewards, dynamic sampling, prompt cap, vLLM and ERC checks) `ce_gppo_trl.rollout`,
time-varying control `ce_gppo_trl.callbacks` and its checkpointed state `ce_gppo_trl.control_state`. Its overrides of
TRL / transformers methods, each with its reason, are listed in `CEGPPOTrainer`'s docstring.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import IterableDataset
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer import grpo_trainer
from trl.trainer.utils import (
    shuffle_sequence_dict,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

from . import control_state, rollout
from .attribution import EntropyAttribution, EntropyGainMeter, attribution_groups
from .callbacks import callbacks_from_config
from .config import CEGPPOConfig, on_policy_message
from .diagnostics import entropy_dynamics_metrics, entropy_dynamics_sums
from .losses import (
    AGGREGATION,
    CLIPPED_LOSS_TYPES,
    COVARIANCE_SELECTIONS,
    POLICY_LOSSES,
    Bound,
    PolicyLossArgs,
    aggregate_loss,
    clip_regions,
    dual_clip_mask,
    entropy_ratio,
    entropy_ratio_mask,
    gspo_token_log_ratio,
    mix_bound,
    positive_nll_loss,
    prob_clip_lower,
    prob_clip_upper,
    safe_ratio,
    sequence_log_ratio,
)
from .schedules import rollout_warmup_factor
from .step_metrics import StepMetrics
from .vllm_lora import adapter_sync_while_building

logger = logging.getLogger(__name__)

_HALF_DTYPES = (torch.bfloat16, torch.float16)
# Clip-Cov / KL-Cov settings passed to the per-token loss under their config names (verl's).
_COVARIANCE_FIELDS = ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "kl_cov_ratio", "ppo_kl_coef")

# Model inputs besides ids and masks that TRL forwards to `_get_per_token_logps_and_entropies` (vision models).
_EXTRA_MODEL_INPUTS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def active_dropout(model: torch.nn.Module) -> list[str]:
    """Where `model` applies dropout in train mode: dropout modules with `p > 0`, and float attributes named
    `*dropout*` above 0, which attention layers (Llama, Qwen2, ...) pass to the attention kernel.

    Example:
        >>> active_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
        ['1 (Dropout p=0.1)']
    """
    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            if module.p > 0:
                found.append(f"{name} ({type(module).__name__} p={module.p})")
            continue
        for attribute, value in vars(module).items():
            if "dropout" in attribute and isinstance(value, float) and value > 0:
                found.append(f"{name}.{attribute}={value}")
    return found


def disable_float_dropout(model: torch.nn.Module) -> None:
    """Zero the float `*dropout*` attributes that `active_dropout` reports (TRL zeroes the dropout modules)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            continue
        for attribute, value in list(vars(module).items()):
            if "dropout" in attribute and isinstance(value, float) and value > 0:
                setattr(module, attribute, 0.0)


@dataclass
class LossStep:
    """What one micro-batch's loss computed, for its metrics and the entropy attribution (detach before reducing)."""

    loss: torch.Tensor
    per_token_logps: torch.Tensor
    entropies: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    ratio: torch.Tensor  # detached; capped at `delta` as TRL's clip metrics read it
    loss_args: PolicyLossArgs
    clipped: tuple[torch.Tensor | None, torch.Tensor | None]  # clip_regions: (low, high), clipped loss types only
    entropy_ratio: torch.Tensor | None = None  # ERC's rho
    erc_kept: torch.Tensor | None = None  # ERC: tokens inside the band
    per_token_kl: torch.Tensor | None = None
    positive: torch.Tensor | None = None  # the NLL term's correct responses
    policy_loss: torch.Tensor | None = None  # the reduced policy term alone (logged with TRL's bonus, as TRL does)
    aux_loss: torch.Tensor | None = None


class RolloutAlignedSaves(TrainerCallback):
    """Moves each step checkpoint that falls inside a rollout batch to the end of that batch.

    TRL keeps the rest of a rollout batch in memory only: a run resumed from a step inside one would generate a new
    batch at once and shift every later rollout boundary (and the off-policy updates) against the uninterrupted run.
    The final checkpoint is kept where it is (the run is over). Added by `CEGPPOTrainer` with `save_strategy="steps"`
    when `save_steps` is not a multiple of the updates per rollout batch.
    """

    def __init__(self) -> None:
        self.pending = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= state.max_steps:
            return control
        if args.at_rollout_boundary(state.global_step):
            control.should_save = control.should_save or self.pending
            self.pending = False
        elif control.should_save:
            control.should_save, self.pending = False, True
        return control


class CEGPPOTrainer(GRPOTrainer):
    """GRPO trainer with CE-GPPO (arXiv 2509.20712), the dual clip and Entropy Ratio Clipping (arXiv 2512.05591).

    Takes the same arguments as `trl.GRPOTrainer`; `args` must be a [`CEGPPOConfig`].

    Overrides of TRL / transformers methods, and why each is needed:

    - `_compute_loss`: this library's loss path (`_compute_policy_loss`) when the config needs it
      (`CEGPPOConfig.uses_own_loss`); otherwise TRL's own, untouched, so every TRL loss type behaves as in TRL.
    - `_generate_and_score_completions`: keeps ERC's old entropies from TRL's own no-grad scoring pass (no extra
      forward pass) and checks the trainer-vs-vLLM log-prob gap right after TRL's weight sync.
    - `_get_per_token_logps_and_entropies`: asks that scoring pass for the entropies it otherwise skips.
    - `_calculate_rewards`: keeps each completion's per-function rewards, which TRL reduces to advantages, for the
      NLL term and dynamic sampling.
    - `_prepare_inputs`: TRL's training branch with `_rollout` (rewards in the batch, dynamic sampling's extra
      rounds) in place of its single `_generate_and_score_completions` call; only with those features on.
    - `_tokenize_prompts`: the authors' left-truncating prompt cap (`max_prompt_length`), which TRL 1.16 dropped.
    - `create_scheduler`: verl's warm-up counted in rollout batches (`warmup_rollout_batches`).
    - `_clip_grad_norm`: hands the pre-clip gradient norm to the entropy attribution.
    - `_save_checkpoint` / `_load_optimizer_and_scheduler`: save and restore the entropy-control state (knob values,
      callback states; `ce_gppo_trl.control_state`), TRL's pattern for its adaptive entropy state.
    - `end` (transformers' public `Trainer.end`): every process leaves the gloo group together, the DDP wrapper freed
      first; without it a two-process CPU run could hang or abort at exit.

    Entropy control (`ce_gppo_trl.callbacks`) changes the knobs this trainer reads at every step (`ce_gppo_beta1/2`,
    `epsilon_low/high`, `erc_low/high`, `prob_clip_weight_low/high`, `entropy_control_coef`); the trainer attaches
    the callbacks its config asks for and binds every callback that has a `bind` method.

    Example:
        ```python
        from ce_gppo_trl import CEGPPOConfig, CEGPPOTrainer
        from ce_gppo_trl.rewards import math_accuracy_reward

        args = CEGPPOConfig(output_dir="out", ce_gppo_beta1=0.5, ce_gppo_beta2=1.0, steps_per_generation=8)
        trainer = CEGPPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=math_accuracy_reward,
                                args=args, train_dataset=dataset)
        trainer.train()
        ```
    """

    def __init__(self, model: Any, reward_funcs: Any = None, args: CEGPPOConfig | None = None, **kwargs: Any):
        if args is None:
            args = CEGPPOConfig(output_dir="ce-gppo-output")
        if not isinstance(args, CEGPPOConfig):
            raise TypeError(
                f"CEGPPOTrainer needs args=CEGPPOConfig(...), got {type(args).__name__}; CEGPPOConfig accepts every "
                "GRPOConfig field (use trl.GRPOTrainer for a plain GRPOConfig)."
            )
        # Current values of the loss knobs; entropy-control callbacks change them between steps.
        self.ce_gppo_beta1 = args.ce_gppo_beta1
        self.ce_gppo_beta2 = args.ce_gppo_beta2
        self.erc_low = args.erc_low
        self.erc_high = args.erc_high
        self.prob_clip_weight_low = args.prob_clip_weight_low
        self.prob_clip_weight_high = args.prob_clip_weight_high
        self.entropy_control_coef = 0.0
        self._entropy_gain_meter: EntropyGainMeter | None = None
        self._old_entropies: list[torch.Tensor] | torch.Tensor | None = None
        self._old_entropies_logps: torch.Tensor | None = None  # log-probs of the captured pass, checked against TRL's
        self._warned_vllm_logp_difference = False
        # With PEFT and vLLM, the engine TRL builds serves the adapter (vllm_lora.py) unless vllm_lora_sync='merge'.
        with adapter_sync_while_building(grpo_trainer, args.vllm_lora_sync):
            super().__init__(model, reward_funcs, args=args, **kwargs)
        for callback in callbacks_from_config(args):
            self.add_callback(callback)
        self._entropy_attribution = None
        if args.entropy_attribution_steps:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                raise ValueError(
                    f"entropy_attribution_steps={args.entropy_attribution_steps} is not supported with DeepSpeed or "
                    "FSDP: the attribution reads whole parameters and optimizer states, which they shard. Use DDP "
                    "(or one process), or entropy_attribution_steps=0."
                )
            self._entropy_attribution = EntropyAttribution(self, args.entropy_attribution_steps)
            self.add_callback(self._entropy_attribution)
        self._bind_entropy_control()
        self._align_saves()
        self._warn_if_on_policy()
        self._check_dropout()
        self._check_master_weights()
        args = self.args
        self._positive_nll_reward_index = rollout.positive_nll_reward_index(
            list(self.reward_func_names), args.positive_nll_coef, args.positive_nll_reward
        )

    def entropy_gain_meter(self, every: int) -> EntropyGainMeter:
        """The `EntropyGainMeter` of the measured-gain controller, attached on first call (by its `bind`)."""
        if self._entropy_gain_meter is None:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                raise ValueError(
                    "entropy_controller_law='measured' (or 'scaled_pi') is not supported with DeepSpeed or FSDP: the "
                    "gain is measured on whole parameters and optimizer states, which they shard. Set "
                    "entropy_controller_law='pi' (the fixed-gain law), or use DDP or one process."
                )
            self._entropy_gain_meter = EntropyGainMeter(self, every)
            self.add_callback(self._entropy_gain_meter)
        return self._entropy_gain_meter

    def end(self) -> None:
        """Finish the trackers and leave the process group, every process together (transformers' `Trainer.end`).

        Frees the DDP wrapper first (its reducer holds the process group) while every process still has the group:
        torch 2.13's gloo group, destroyed first and freed later with the reducer, can hang one rank at exit once the
        others are gone; and a rank that tore gloo down while another still used it died of SIGABRT ("terminate
        called without an active exception"), about once in 200 two-process runs on a loaded machine.
        """
        self.accelerator.wait_for_everyone()
        self.model_wrapped = self.model
        self.accelerator._models.clear()
        gc.collect()
        super().end()

    def _bind_entropy_control(self) -> None:
        self._control_callbacks = [cb for cb in self.callback_handler.callbacks if hasattr(cb, "bind")]
        for callback in self._control_callbacks:
            callback.bind(self)
        if self._entropy_bonus_enabled and any(
            getattr(cb, "actuator", None) == "entropy" for cb in self._control_callbacks
        ):
            raise ValueError(
                "entropy_controller_actuator='entropy' (an entropy controller callback) and TRL's entropy bonus "
                f"(entropy_coef={self.entropy_coef!r}, use_adaptive_entropy={self.use_adaptive_entropy!r}) would "
                "both put an entropy term in the loss; use one of them."
            )
        # A callback passed from Python may need per-token bounds with a config that would otherwise use TRL's loss.
        self._uses_own_loss = self.args.uses_own_loss or any(
            getattr(cb, "needs_own_loss", False) for cb in self._control_callbacks
        )
        if self._uses_own_loss and not self.args.uses_own_loss:
            if self.loss_type not in CLIPPED_LOSS_TYPES:
                raise ValueError(
                    f"loss_type={self.loss_type!r}: per-token clip bounds need a clipped loss type "
                    f"{CLIPPED_LOSS_TYPES}."
                )

    def _align_saves(self) -> None:
        args = self.args
        if getattr(args.save_strategy, "value", args.save_strategy) != "steps" or not args.off_policy:
            return
        self.add_callback(RolloutAlignedSaves())
        if args.save_steps >= 1 and not args.at_rollout_boundary(int(args.save_steps)):
            if self.accelerator.is_main_process:
                logger.warning(
                    f"save_steps={args.save_steps} is not a multiple of the optimizer updates per rollout batch "
                    f"(steps_per_generation={args.steps_per_generation} x num_iterations={args.num_iterations} / "
                    f"gradient_accumulation_steps={args.gradient_accumulation_steps}): each checkpoint is saved at "
                    "the end of its rollout batch instead, so that a resumed run keeps the rollout boundaries. Set "
                    "save_steps to a multiple of the updates per rollout batch to save exactly there."
                )

    def _warn_if_on_policy(self) -> None:
        message = on_policy_message(self.args)
        if message is not None and self.accelerator.is_main_process:
            logger.warning(message)
        args = self.args
        if self.use_vllm and args.vllm_logp_difference_bound is not None:
            if not (self.vllm_importance_sampling_correction or args.off_policy) and self.accelerator.is_main_process:
                logger.warning(
                    f"vllm_logp_difference_bound={args.vllm_logp_difference_bound} cannot be checked in this run: "
                    "with vllm_importance_sampling_correction=False and on-policy updates TRL scores no "
                    "old_per_token_logps, so the trainer's log-probs of vLLM's samples are never computed. Set "
                    "vllm_importance_sampling_correction=True to check for stale vLLM weights, or "
                    "vllm_logp_difference_bound=None."
                )

    def _check_dropout(self) -> None:
        if self.args.disable_dropout:
            # TRL's disable_dropout_in_model zeroes nn.Dropout modules only; Llama- and Qwen-style attention layers
            # pass a float `attention_dropout` to the attention kernel, which disable_dropout should turn off too.
            for model in (self.model, self.ref_model):
                if model is not None:
                    disable_float_dropout(model)
        found = active_dropout(self.model)
        if self.args.erc_enabled and found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise ValueError(
                f"disable_dropout=False is not allowed with ERC (erc_low/erc_high) on a model with dropout ({shown}): "
                "TRL scores old_per_token_logps and trains in train mode, so H_old and H_theta would come from "
                f"different dropout masks and the band ({self.erc_low}, {self.erc_high}) would drop the gradient of "
                "random tokens; set disable_dropout=True."
            )

    def _check_master_weights(self) -> None:
        """Keep float32 master weights wherever a plain torch optimizer steps the model.

        An optimizer stepping bf16 / fp16 weights rounds each update to the weight's precision: at the recipes'
        learning rate of 1e-6 almost every update is below half a bf16 step (2**-9 of the weight) and is lost.
        DeepSpeed keeps float32 master weights, and accelerate upcasts the trainable weights to float32 under FSDP
        with mixed precision (`fsdp2_prepare_model`), so both are left alone. LoRA adapters are small: TRL casts
        them to bf16 on a quantized base (QLoRA), and they are upcast back here (PEFT's own default); a full model
        in half precision is refused, since upcasting it would double its memory behind the user's back.
        """
        if self.is_deepspeed_enabled or (self.is_fsdp_enabled and self.accelerator.mixed_precision != "no"):
            return
        half = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and p.dtype in _HALF_DTYPES]
        if not half:
            return
        if is_peft_model(self.model):
            dtype = str(half[0][1].dtype).removeprefix("torch.")  # read before the upcast below
            for _, param in half:
                param.data = param.data.float()
            if self.accelerator.is_main_process:
                logger.info(
                    "%d trainable adapter tensors upcast from %s to float32 (master weights for the optimizer; the "
                    "compute stays in bf16 with bf16=True)",
                    len(half),
                    dtype,
                )
            return
        dtype = str(half[0][1].dtype).removeprefix("torch.")
        kind = str(self.accelerator.distributed_type).rsplit(".", 1)[-1]
        raise ValueError(
            f"dtype={dtype} is not allowed for weights that a plain optimizer steps (distributed_type={kind}, "
            f"{len(half)} trainable {dtype} tensors such as {half[0][0]!r}): AdamW would update the {dtype} weights "
            f"themselves and round away every update below half a {dtype} step of the weight, most of them at "
            f"learning_rate={self.args.learning_rate:g}. Load the weights in float32 (dtype: float32, or "
            "--dtype float32) and keep the compute in bf16 with bf16: true (autocast); or launch with DeepSpeed "
            "(configs/accelerate/zero2.yaml, zero3.yaml) or FSDP2 with bf16: true, which keep float32 master "
            "weights; or train LoRA adapters (use_peft: true)."
        )

    # ERC: the old entropies come out of TRL's own scoring pass for old_per_token_logps. In TRL 1.16 that pass runs
    # under no_grad over the whole rollout batch in generation order, in chunks of per_device_train_batch_size rows;
    # the new entropies come from the training pass on a shuffled micro-batch, with gradients and activation
    # checkpointing. Both go through TRL's fused LM head (trl/kernels/chunked_logprob.py), which takes the
    # log-softmax and the entropy in float32 from logits computed in the autocast dtype: bf16 under bf16 autocast,
    # float32 with cast_lm_head_to_fp32 (CEGPPOConfig warns without it). On CPU both passes are bit-identical at the
    # same weights; on a GPU the bf16 kernels depend on the batch shape (tests/test_trainer.py, ratio noise).

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        capture = self.args.erc_enabled and self.args.off_policy
        # A list means "waiting for the old-logps pass"; that pass is TRL's first call on self.model under no_grad.
        self._old_entropies = [] if capture else None
        try:
            output = super()._generate_and_score_completions(inputs)
            if self.use_vllm:
                self._check_vllm_logp_difference(output)
            if capture:
                if not isinstance(self._old_entropies, torch.Tensor):
                    raise RuntimeError(
                        "ERC expected TRL's scoring pass for old_per_token_logps to run; this TRL version no longer "
                        "calls _get_per_token_logps_and_entropies(self.model, ...) there."
                    )
                # The arming condition copies TRL's for the old-logps pass; if a TRL release changed it, another
                # no-grad pass of self.model (the reference pass under PEFT with beta > 0) could be captured instead.
                error = rollout.captured_pass_error(output.get("old_per_token_logps"), self._old_entropies_logps)
                if error is not None:
                    raise RuntimeError(error)
                output["old_entropies"] = self._old_entropies
        finally:
            self._old_entropies = self._old_entropies_logps = None
        return output

    def _check_vllm_logp_difference(self, output: dict[str, Any]) -> None:
        """Log the trainer-vs-vLLM log-prob gap under TRL's name when TRL does not log it (TRL does only with
        `vllm_importance_sampling_correction`), and warn once above `vllm_logp_difference_bound`: stale weights."""
        difference = rollout.vllm_logp_difference(output, self.accelerator)
        if difference is None:
            return
        if not self.vllm_importance_sampling_correction:
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["sampling/sampling_logp_difference/mean"].append(difference)
        bound = self.args.vllm_logp_difference_bound
        if bound is None or difference <= bound or self._warned_vllm_logp_difference:
            return
        self._warned_vllm_logp_difference = True
        if self.accelerator.is_main_process:
            logger.warning(rollout.vllm_logp_warning(difference, bound, self.state.global_step))

    def _get_per_token_logps_and_entropies(self, model: Any, *args: Any, **kwargs: Any):
        capture = isinstance(self._old_entropies, list) and model is self.model and not torch.is_grad_enabled()
        if not capture:
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(
            model, *args, **{**kwargs, "compute_entropy": True}
        )
        self._old_entropies, self._old_entropies_logps = entropies, logps
        return logps, (entropies if kwargs.get("compute_entropy") else None), aux_loss

    # The loss: TRL 1.16's GRPOTrainer._compute_loss with the per-token loss from the `POLICY_LOSSES` registry.

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if not self._uses_own_loss:
            return super()._compute_loss(model, inputs)
        return self._compute_policy_loss(model, inputs)

    def _compute_policy_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """This library's loss path, for every loss type in `POLICY_LOSSES`, top to bottom.

        Same inputs, masks and normalisers as TRL 1.16's `GRPOTrainer._compute_loss`; only the per-token loss
        (registry), the clip bounds, ERC, the NLL and entropy-control terms and the metrics differ.
        """
        args = self.args
        mode = "train" if self.model.training else "eval"

        # Per-token log-probs and entropies of pi_theta on this micro-batch.
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in _EXTRA_MODEL_INPUTS},
        )
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        old_per_token_logps = inputs.get("old_per_token_logps")
        if old_per_token_logps is None:  # on-policy: TRL skips the scoring pass, pi_old == pi_theta
            old_per_token_logps = per_token_logps.detach()

        # The log-ratio log pi_theta - log pi_old, per token or (GSPO) per sequence.
        token_log_ratio = per_token_logps - old_per_token_logps
        log_ratio = loss_log_ratio = token_log_ratio
        if self.importance_sampling_level == "sequence":
            log_ratio = loss_log_ratio = sequence_log_ratio(token_log_ratio, mask)  # GSPO's (B, 1) ratio, as TRL
            if self.loss_type == "ce_gppo":
                # Same value and gradient as the (B, 1) form under the token mean; per-token masks (ERC,
                # top_entropy_quantile) then act on each token's own gradient (losses.gspo_token_log_ratio).
                loss_log_ratio = gspo_token_log_ratio(token_log_ratio, mask)

        # The method's per-token loss.
        epsilon_low, epsilon_high = self._clip_bounds(old_per_token_logps)
        loss_args = PolicyLossArgs(
            per_token_logps=per_token_logps,
            epsilon_low=epsilon_low,
            epsilon_high=epsilon_high,
            beta1=self.ce_gppo_beta1,
            beta2=self.ce_gppo_beta2,
            clip_ratio_c=args.clip_ratio_c,
            delta=args.delta,
            sapo_temperature_pos=args.sapo_temperature_pos,
            sapo_temperature_neg=args.sapo_temperature_neg,
            mask=mask,
            **{name: getattr(args, name) for name in _COVARIANCE_FIELDS},
        )
        if self.loss_type == "vespo":
            loss_args.phi_seq = self.get_gamma_weights(
                advantages=advantages,
                log_ratio_per_token=token_log_ratio,
                mask=mask,
                importance_sampling_ratio=inputs.get("importance_sampling_ratio"),
                k_pos=args.vespo_k_pos,
                lambda_pos=args.vespo_lambda_pos,
                k_neg=args.vespo_k_neg,
                lambda_neg=args.vespo_lambda_neg,
            )
        if self.loss_type in COVARIANCE_SELECTIONS:
            # Drawn once, for the loss and its metric. As in verl, whose loss function sees one micro-batch on one
            # process, the covariance is centred over this micro-batch's loss tokens on this process. Token level
            # only (config), so log_ratio is loss_log_ratio.
            loss_args.selected = COVARIANCE_SELECTIONS[self.loss_type](log_ratio, advantages, **loss_args.as_kwargs())
        per_token_loss = POLICY_LOSSES[self.loss_type](loss_log_ratio, advantages, **loss_args.as_kwargs())

        # Token masks: TRL's off-policy mask, top_entropy_quantile, vLLM's importance sampling, ERC.
        if self.off_policy_mask_threshold is not None:
            per_token_loss = per_token_loss * self.get_off_policy_mask(
                advantages=advantages,
                per_token_logps=per_token_logps,
                sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_per_token_logps),
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )
        entropy_mask = rho = erc_kept = None
        if self.top_entropy_quantile < 1.0:
            entropy_mask = self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
            per_token_loss = per_token_loss * entropy_mask
        if self.use_vllm and self.vllm_importance_sampling_correction and self.loss_type != "vespo":
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        if args.erc_enabled:
            # ERC (arXiv 2512.05591) on top of clipping, dual clip and IS correction: out-of-band tokens keep their
            # value and their place in the normaliser, but no gradient.
            old_entropies = inputs.get("old_entropies", entropies.detach())
            rho = entropy_ratio(entropies.detach(), old_entropies)
            erc_kept = entropy_ratio_mask(entropies.detach(), old_entropies, self.erc_low, self.erc_high)
            per_token_loss = torch.where(erc_kept, per_token_loss, per_token_loss.detach())

        # The KL penalty to the reference model, per token.
        per_token_kl = None
        if self.beta != 0.0:
            ref_log_ratio = inputs["ref_per_token_logps"] - per_token_logps
            per_token_kl = torch.exp(ref_log_ratio) - ref_log_ratio - 1
            if args.use_bias_correction_kl:
                per_token_kl = per_token_kl * safe_ratio(log_ratio)
            per_token_loss = per_token_loss + self.beta * per_token_kl

        # Reduction to this micro-batch's share of the update.
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        aggregation = AGGREGATION[self.loss_type]
        if aggregation == "token-mean":
            # num_items_in_batch spans the generation batch on all processes: rescale it to one accumulation window
            num_items = inputs["num_items_in_batch"] / self.accelerator.num_processes
            if mode == "train":
                num_items = num_items * accumulation / args.steps_per_generation
            loss = aggregate_loss(per_token_loss, mask, aggregation, num_items=num_items)
            policy_loss = loss.detach()
        else:
            loss = aggregate_loss(per_token_loss, mask, aggregation, max_completion_length=self.max_completion_length)
            policy_loss = loss.detach()
            loss = loss / accumulation

        # Terms added to the reduced loss: TRL's entropy bonus, the NLL on correct responses, the MoE router's
        # auxiliary loss, the entropy controller's signed entropy term.
        if self._entropy_bonus_enabled:
            loss = loss - self._trl_entropy_bonus(entropies, mask, entropy_mask, mode, accumulation)
        positive = None
        if args.positive_nll_coef > 0 and inputs.get("positive_nll_rewards") is not None:  # None: evaluation batch
            # The authors' accuracy == 1.0, for both +1/-1 and 1/0 scorers; NaN (unscorable) is not positive. The
            # micro-batch is weighted by its share (1 / accumulation) of the update, like their micro-batch weights.
            positive = inputs["positive_nll_rewards"] > 0
            loss = loss + args.positive_nll_coef * positive_nll_loss(per_token_logps, mask, positive) / accumulation
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
        if self.entropy_control_coef:
            # The entropy controller's signed entropy term (entropy_controller_actuator="entropy"): TRL's bonus form
            # L - coef * mean(H), over the same tokens as TRL's bonus (those top_entropy_quantile leaves).
            loss = loss - self.entropy_control_coef * _bonus_entropy(entropies, mask, entropy_mask) / accumulation

        # Metrics, the entropy attribution and the controller's gain meter.
        ratio = safe_ratio(log_ratio.detach())
        if args.delta is not None and self.loss_type in CLIPPED_LOSS_TYPES and self.loss_type != "ce_gppo":
            ratio = ratio.clamp(max=args.delta)  # TRL's two-sided clip; TRL's clip metrics read the capped ratio
        clipped = (None, None)
        if self.loss_type in CLIPPED_LOSS_TYPES:
            clipped = clip_regions(ratio, advantages, epsilon_low, epsilon_high)
        step = LossStep(
            loss=loss,
            per_token_logps=per_token_logps,
            entropies=entropies,
            advantages=advantages,
            mask=mask,
            ratio=ratio,
            loss_args=loss_args,
            clipped=clipped,
            entropy_ratio=rho,
            erc_kept=erc_kept,
            per_token_kl=per_token_kl,
            positive=positive,
            policy_loss=policy_loss,
            aux_loss=aux_loss if self.aux_loss_enabled else None,
        )
        self._log_loss_metrics(mode, step)
        attribution = self._entropy_attribution
        if mode == "train" and attribution is not None and per_token_logps.requires_grad and attribution.wants():
            forward = {"input_ids": input_ids, "attention_mask": attention_mask}
            self._collect_attribution(inputs, forward, step)
        meter = self._entropy_gain_meter
        if mode == "train" and meter is not None and entropies.requires_grad and meter.wants():
            # The tokens of the controller's entropy term (_bonus_entropy's): the gain is that term's.
            meter.collect(
                entropies,
                mask if entropy_mask is None else mask * entropy_mask,
                accumulation,
                self.entropy_control_coef,
            )
        return loss

    def _clip_bounds(self, old_per_token_logps: torch.Tensor) -> tuple[Bound, Bound]:
        """`(epsilon_low, epsilon_high)`: the current half-widths, mixed with the probability-dependent bounds (arXiv
        2602.09782) by `prob_clip_weight_low/high`; those are functions of pi_old, fixed for the whole update."""
        epsilon_low, epsilon_high = self.epsilon_low, self.epsilon_high
        if not (self.prob_clip_weight_low or self.prob_clip_weight_high):
            return epsilon_low, epsilon_high
        args, p_old = self.args, old_per_token_logps.detach().exp()
        upper = prob_clip_upper(p_old, alpha=args.prob_clip_high_alpha, b=args.prob_clip_high_b)
        lower = prob_clip_lower(p_old, alpha=args.prob_clip_low_alpha, b=args.prob_clip_low_b)
        return mix_bound(epsilon_low, lower, self.prob_clip_weight_low), mix_bound(
            epsilon_high, upper, self.prob_clip_weight_high
        )

    def _trl_entropy_bonus(
        self,
        entropies: torch.Tensor,
        mask: torch.Tensor,
        entropy_mask: torch.Tensor | None,
        mode: str,
        accumulation: float,
    ) -> torch.Tensor:
        """`coef x` TRL 1.16's entropy-bonus term, to subtract from the loss, with its adaptive (Skywork-OR1) update.

        TRL writes this inline in `GRPOTrainer._compute_loss`, so it cannot be called; this is the same computation
        on the same state (`entropy_coef`, `_last_world_entropy`, `_entropy_window_stats`, which TRL's
        `_save_checkpoint` / `_load_optimizer_and_scheduler` save and restore): the mean entropy of the tokens the
        policy term acts on, divided by the accumulation steps for every loss type; the coefficient and gate of the
        previous optimizer step; at each step boundary the coefficient steps up by `entropy_coef_delta` when the
        window-global entropy is at or below `entropy_target` and down otherwise, within `entropy_coef_min/max`.
        """
        args = self.args
        effective_mask = mask if entropy_mask is None else mask * entropy_mask
        entropy_loss = _bonus_entropy(entropies, mask, entropy_mask) / accumulation
        coef = self.entropy_coef
        if self.use_adaptive_entropy and self._last_world_entropy > args.entropy_target:
            coef = 0.0
        if self.use_adaptive_entropy and mode == "train":
            stats = torch.stack([(entropies * effective_mask).sum(), effective_mask.sum()]).detach()
            window = self._entropy_window_stats
            self._entropy_window_stats = stats if window is None else window + stats
            if self.accelerator.sync_gradients:
                totals = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
                world_entropy = (totals[0] / totals[1].clamp(min=1.0)).item()
                if world_entropy <= args.entropy_target:
                    self.entropy_coef = min(self.entropy_coef + args.entropy_coef_delta, args.entropy_coef_max)
                else:
                    self.entropy_coef = max(self.entropy_coef - args.entropy_coef_delta, args.entropy_coef_min)
                self._last_world_entropy = world_entropy
                self._entropy_window_stats = None
        return coef * entropy_loss

    # Metrics: every metric of the loss, gathered over processes in one collective (ce_gppo_trl.step_metrics).

    def _log_loss_metrics(self, mode: str, step: LossStep) -> None:
        """Log one micro-batch's loss metrics under TRL's names and this library's, reduced over processes once."""
        args, loss_args, mask = self.args, step.loss_args, step.mask
        local = StepMetrics()
        local.masked_mean("entropy", step.entropies, mask)
        if step.per_token_kl is not None:
            local.masked_mean("kl", step.per_token_kl, mask)
        if step.positive is not None:
            positive_mask = mask * step.positive.to(mask.dtype).unsqueeze(-1)
            local.masked_mean("positive_nll", -step.per_token_logps.detach(), positive_mask)
        if self._entropy_bonus_enabled:
            local.process_mean("policy_loss", step.policy_loss)
        if step.aux_loss is not None:
            local.process_mean("aux_loss", step.aux_loss)
        if step.entropy_ratio is not None:
            rho, valid, inf = step.entropy_ratio, mask.bool(), torch.tensor(float("inf"), device=mask.device)
            local.masked_mean("entropy_ratio/mean", rho, mask)
            local.min("entropy_ratio/min", torch.where(valid, rho, inf).min())
            local.max("entropy_ratio/max", torch.where(valid, rho, -inf).max())
            local.masked_mean("entropy_ratio/clip_low_mean", (rho <= self.erc_low).float(), mask)
            local.masked_mean("entropy_ratio/clip_high_mean", (rho >= self.erc_high).float(), mask)
        self._clip_metrics(local, step)
        diagnose = mode == "train" and args.entropy_diagnostics and step.per_token_logps.requires_grad
        if diagnose:
            local.sum("entropy_dynamics", self._entropy_dynamics_sums(step))
        control = mode == "train" and (bool(self._control_callbacks) or args.prob_clip_enabled)
        if control:
            mask_f = mask.float()
            bounds = [
                torch.as_tensor(bound, dtype=torch.float32, device=mask.device).expand_as(mask_f)
                for bound in (loss_args.epsilon_low, loss_args.epsilon_high)
            ]
            local.sum("entropy_control", torch.stack([(bound * mask_f).sum() for bound in bounds] + [mask_f.sum()]))

        reduced = local.reduce(self.accelerator)
        metrics = self._metrics[mode]
        if diagnose:
            for name, value in entropy_dynamics_metrics(reduced.pop("entropy_dynamics")).items():
                metrics[f"entropy_dynamics/{name}"].append(value)
        if control:
            eps_low_sum, eps_high_sum, count = reduced.pop("entropy_control").tolist()
            metrics["entropy_control/epsilon_low"].append(eps_low_sum / max(count, 1.0))
            metrics["entropy_control/epsilon_high"].append(eps_high_sum / max(count, 1.0))
            if self.loss_type == "ce_gppo":
                metrics["entropy_control/beta1"].append(self.ce_gppo_beta1)
                metrics["entropy_control/beta2"].append(self.ce_gppo_beta2)
            if args.erc_enabled:
                metrics["entropy_control/erc_low"].append(self.erc_low)
                metrics["entropy_control/erc_high"].append(self.erc_high)
        for name, value in reduced.items():
            metrics[name].append(value)
        if self._entropy_bonus_enabled and mode == "train" and self.accelerator.sync_gradients:
            metrics["entropy_coef"].append(self.entropy_coef)

    def _clip_metrics(self, local: StepMetrics, step: LossStep) -> None:
        """The clip-family metrics of this loss type: TRL's `clip_ratio/*` (plus the dual clip), `cispo_clip_ratio`,
        `vespo/phi_seq_mean`, and the Clip-Cov / KL-Cov selection's share."""
        loss_args, mask = step.loss_args, step.mask
        if loss_args.selected is not None:  # Clip-Cov: tokens detached; KL-Cov: tokens given the |log r| penalty
            local.masked_mean(f"{self.loss_type}/selected_mean", loss_args.selected.float(), mask)
        if self.loss_type == "cispo":
            is_capped = (step.ratio > loss_args.epsilon_high) & (step.advantages > 0)
            local.masked_mean("cispo_clip_ratio", is_capped.float(), mask)
        elif self.loss_type == "vespo":
            local.masked_mean("vespo/phi_seq_mean", loss_args.phi_seq, mask)
        elif self.loss_type in CLIPPED_LOSS_TYPES:
            is_low, is_high = step.clipped
            local.masked_mean("clip_ratio/low_mean", is_low.float(), mask)
            local.masked_mean("clip_ratio/high_mean", is_high.float(), mask)
            local.masked_mean("clip_ratio/region_mean", (is_low | is_high).float(), mask)
            local.min("clip_ratio/low_min", _sequence_mean(is_low, mask), ignore_nan=True)
            local.max("clip_ratio/high_max", _sequence_mean(is_high, mask), ignore_nan=True)
            if loss_args.clip_ratio_c is not None:
                is_dual = dual_clip_mask(step.ratio, step.advantages, loss_args.clip_ratio_c)
                local.masked_mean("clip_ratio/dual_mean", is_dual.float(), mask)

    def _entropy_dynamics_sums(self, step: LossStep) -> torch.Tensor:
        # Each token's gradient weight g = -d loss / d log p, read off the loss itself so that it is exact for every
        # loss type, mask, dual clip and ERC; this backward only spans the element-wise ops after log p.
        (grad,) = torch.autograd.grad(step.loss, step.per_token_logps, retain_graph=True, allow_unused=True)
        # DDP averages gradients over processes: dividing g makes the reduced predicted change their mean (the
        # gradient shares are ratios and do not change).
        grad_weight = (
            torch.zeros_like(step.per_token_logps) if grad is None else -grad
        ) / self.accelerator.num_processes
        return entropy_dynamics_sums(
            step.per_token_logps, step.entropies, step.advantages, grad_weight, step.mask, *step.clipped
        )

    # Entropy attribution (ce_gppo_trl.attribution): the token groups of an attributed step's micro-batch, and what
    # the attribution keeps of it (its gradients, and the forward inputs to re-score it after the optimizer step).

    def _collect_attribution(self, inputs: dict[str, Any], forward: dict[str, Any], step: LossStep) -> None:
        # `forward`: the loss pass's input_ids / attention_mask, reused to re-score the micro-batch after the step.
        dual = None
        if self.loss_type in CLIPPED_LOSS_TYPES and step.loss_args.clip_ratio_c is not None:
            dual = dual_clip_mask(step.ratio, step.advantages, step.loss_args.clip_ratio_c)
        erc_dropped = None if step.erc_kept is None else ~step.erc_kept
        groups = attribution_groups(
            step.per_token_logps, step.entropies, step.advantages, step.mask, *step.clipped, dual, erc_dropped
        )
        forward["logits_to_keep"] = inputs["completion_ids"].size(1)
        forward.update({key: inputs[key] for key in _EXTRA_MODEL_INPUTS if inputs.get(key) is not None})
        self._entropy_attribution.collect(step.loss, step.per_token_logps, step.entropies, step.mask, groups, forward)

    def _clip_grad_norm(self, model: Any) -> Any:
        # The pre-clip norm gives the entropy attribution the clipping scale (torch's max_norm / (norm + 1e-6)).
        norm = super()._clip_grad_norm(model)
        for recorder in (self._entropy_attribution, self._entropy_gain_meter):
            if recorder is not None:
                recorder.record_grad_norm(norm)
        return norm

    # Entropy-control state in checkpoints (ce_gppo_trl.control_state).

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # Written first: transformers' _save_checkpoint pushes the folder to the Hub (push_to_hub, hub_strategy
        # "checkpoint" / "all_checkpoints") before it returns, and the push must carry the controller's state.
        if self._control_callbacks and self.args.should_save:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), folder)
            control_state.save(folder, self, self._control_callbacks)
            if self._entropy_gain_meter is not None:
                self._entropy_gain_meter.save(folder)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if not self._control_callbacks or checkpoint is None:
            return
        if control_state.load(checkpoint, self, self._control_callbacks) and self._entropy_gain_meter is not None:
            self._entropy_gain_meter.load(checkpoint)

    # The authors' training scripts: NLL on correct responses, dynamic sampling, prompt cap, verl's warm-up.

    def _calculate_rewards(
        self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
    ) -> torch.Tensor:
        # Kept (all processes' rows) for the per-completion rewards that the NLL term and dynamic sampling read.
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _tokenize_prompts(self, prompts: list) -> tuple[Any, Any, Any]:
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        multimodal = images is not None or bool(multimodal_fields)
        return rollout.cap_prompts(prompt_ids, multimodal, self.args.max_prompt_length), images, multimodal_fields

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        if not self.args.warmup_rollout_batches or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        factor = partial(
            rollout_warmup_factor,
            updates_per_rollout=int(self.args.updates_per_rollout),
            warmup_rollouts=self.args.warmup_rollout_batches,
        )
        self.lr_scheduler = LambdaLR(self.optimizer if optimizer is None else optimizer, factor)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        args = self.args
        if not self.model.training or not (args.dynamic_sampling or args.positive_nll_coef > 0):
            return super()._prepare_inputs(generation_batch)
        # The training branch of TRL 1.16's GRPOTrainer._prepare_inputs, with `_rollout` (which adds the rewards and
        # may generate several rounds) in place of its single `_generate_and_score_completions` call.
        generate_every = args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            batch = shuffle_sequence_dict(split_pixel_values_by_grid(self._rollout(generation_batch)))
            batches = split_tensor_dict(batch, args.steps_per_generation)
            self._buffered_inputs = [unsplit_pixel_values_by_grid(batch) for batch in batches]
        return self._buffered_inputs[self._step % args.steps_per_generation]

    def _rollout(self, generation_batch: list[dict[str, Any]]) -> dict[str, Any]:
        """One rollout batch with each completion's total reward under `rewards`; dynamic sampling if configured."""
        output = self._scored_round(generation_batch)
        if not self.args.dynamic_sampling:
            return output
        if isinstance(self.train_dataset, IterableDataset):
            raise ValueError("dynamic_sampling draws refill prompts by index: it needs a map-style train_dataset.")
        group, rows = self.num_generations, len(generation_batch)

        def next_round(round_index: int) -> dict[str, Any]:
            seed_key = (self.args.seed, self.state.global_step, round_index, self.accelerator.process_index)
            return self._scored_round(rollout.refill_prompts(self.train_dataset, rows, group, seed_key))

        return rollout.dynamic_sampling(
            output,
            next_round,
            num_groups=rows // group,
            group_size=group,
            max_rounds=self.args.dynamic_sampling_max_rounds,
            accelerator=self.accelerator,
            metrics=self._metrics["train"],
            pad_token_id=self._tokenizer.pad_token_id,
        )

    def _scored_round(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = self._generate_and_score_completions(inputs)
        process = self.accelerator.process_index
        weights, nll_index = self.reward_weights, self._positive_nll_reward_index
        return rollout.attach_rewards(output, self._rewards_per_func, weights, process, nll_index)


def _bonus_entropy(entropies: torch.Tensor, mask: torch.Tensor, entropy_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean entropy of the tokens the policy term acts on (`mask`, narrowed by `top_entropy_quantile`'s
    `entropy_mask`): what TRL 1.16's entropy bonus, and so the controller's signed entropy term, multiplies."""
    effective_mask = mask if entropy_mask is None else mask * entropy_mask
    return (entropies * effective_mask).sum() / effective_mask.sum().clamp(min=1.0)


def _sequence_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sequence's mean of `x` over its tokens in `mask` (NaN for none); sequence-level `x` (B, 1) as is."""
    x = x.float()
    if x.shape[1] == 1:
        return x.squeeze(1)
    return (x * mask).sum(-1) / mask.sum(-1)
