"""Sharded multi-process training on CPU: DeepSpeed ZeRO-2 / ZeRO-3 against one process, and FSDP2's limit.

The accelerate configs are the shipped `configs/accelerate/{zero2,zero3,fsdp2}.yaml` with only the device keys
changed (2 processes, no mixed precision, `use_cpu`). The comparison is `tests/test_launch.py`'s DDP one: the same
seeded rollouts in every layout, then every logged metric and the final weights against one process.

- DeepSpeed runs on CPU through its CPU accelerator over gloo, with the recipe's `--use_cpu false --ddp_backend
  gloo`: with `use_cpu: true` accelerate 1.15 drops DeepSpeed, and without a backend it counts one process while
  DeepSpeed counts two. deepspeed is an optional extra; without it these tests are skipped. The first run compiles
  DeepSpeed's shared-memory communication op (a few minutes, cached in ~/.cache/torch_extensions), hence `slow`.
- FSDP2 cannot run on CPU under accelerate 1.15 (it enables FSDP only on accelerator devices); the launch is refused
  with that reason instead of silently training as DDP. What is checked instead: torch 2.13's FSDP2 itself
  (`fully_shard`, gloo) takes the same CE-GPPO step on 2 CPU processes as on one (`tests/scripts/fsdp2_cpu_step.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_launch import QUICKSTART, ROOT, SCRIPT, free_port, launch, log_history, tiny_overrides

COMMON = ("--max_steps", "2", "--steps_per_generation", "1", "--num_iterations", "2", "--learning_rate", "1e-3")
COMMON += ("--rollout_func", "test_launch.seeded_rollout")


def cpu_accelerate_config(name: str, tmp_path: Path, use_cpu: bool) -> Path:
    """`configs/accelerate/<name>.yaml` for 2 CPU processes: the shipped file with only the device keys changed."""
    config = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no", use_cpu=use_cpu)
    path = tmp_path / f"{name}_cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch_with(config_file: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file CONFIG examples/train_ce_gppo.py --config quickstart.yaml ARGS`."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    command += ["--main_process_port", str(free_port()), str(SCRIPT), "--config", str(QUICKSTART), *args]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_torch_fsdp2_on_cpu_takes_the_same_ce_gppo_step_as_one_process(tiny_model_dir, tmp_path):
    script = ROOT / "tests" / "scripts" / "fsdp2_cpu_step.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    saved = {}
    for processes in (1, 2):
        output = tmp_path / f"step_{processes}.pt"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        command += ["--master_port", str(free_port()), str(script), tiny_model_dir, str(output)]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-6000:]}"
        saved[processes] = torch.load(output)
    assert saved[1]["parameter_type"] == "Parameter" and saved[2]["parameter_type"] == "DTensor"  # sharded
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    one, two = saved[1]["weights"], saved[2]["weights"]
    moved = max((one[k] - initial[k]).abs().max().item() for k in initial)
    gap = max((one[k] - two[k]).abs().max().item() for k in initial)
    assert moved > 1e-2 and gap < 1e-6  # measured: moved 0.11, gap 3e-8


def test_fsdp2_on_cpu_is_refused_not_silently_ddp(tiny_model_dir, tmp_path):
    config = cpu_accelerate_config("fsdp2", tmp_path, use_cpu=True)
    out = tmp_path / "fsdp2"
    result = launch_with(config, *tiny_overrides(tiny_model_dir, out, "--max_steps", "1"), timeout=600)
    assert result.returncode != 0
    assert "distributed_type=MULTI_CPU is not allowed: the accelerate config asked for FSDP" in result.stderr
    assert "only on accelerator devices" in result.stderr
    assert not (out / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_two_processes_on_cpu_match_one_process(tiny_model_dir, tmp_path, stage):
    pytest.importorskip("deepspeed")
    one, two = tmp_path / "one", tmp_path / stage
    launch(*tiny_overrides(tiny_model_dir, one, *COMMON, "--per_device_train_batch_size", "64"))
    config = cpu_accelerate_config(stage, tmp_path, use_cpu=False)
    extra = ("--use_cpu", "false", "--ddp_backend", "gloo", "--dataloader_pin_memory", "false")
    result = launch_with(
        config, *tiny_overrides(tiny_model_dir, two, *COMMON, *extra, "--per_device_train_batch_size", "32")
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    zero = {"zero2": "2", "zero3": "3"}[stage]
    assert "(2 steps, 2 processes)" in result.stdout and f"launch:         DeepSpeed ZeRO-{zero}" in result.stdout

    logs = {name: [e for e in log_history(d) if "loss" in e] for name, d in (("one", one), ("two", two))}
    assert [e["step"] for e in logs["one"]] == [e["step"] for e in logs["two"]] == [1, 2]
    for a, b in zip(logs["one"], logs["two"], strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - {"step_time"}:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert logs["one"][1]["clip_ratio/region_mean"] > 0  # the off-policy update reaches CE-GPPO's clipped regions

    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    final_one, final_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert final_two.keys() == initial.keys()  # ZeRO-3 gathers the full weights for saving
    moved = max((final_one[k] - initial[k]).abs().max().item() for k in initial)
    gap = max((final_one[k] - final_two[k]).abs().max().item() for k in initial)
    assert moved > 1e-3 and gap < 1e-5
    assert json.loads((two / "trainer_state.json").read_text())["global_step"] == 2
