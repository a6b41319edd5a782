"""The first hour on a fresh machine, replayed: the README's quickstart, then every command its summary prints.

One quickstart run (`ce-gppo train --config configs/quickstart.yaml`, the toy model built by its real SFT warm start,
cut to 2 RL steps) is shared by the tests of this module. It runs as a subprocess, as a user runs it, so that its
stderr is what a terminal shows: no warning, no third-party noise, no traceback. The summary's `plot` and `evaluate`
lines are then run exactly as printed (with `python -m ce_gppo_trl` standing in for the `ce-gppo` script, which
the same `main` serves). A fresh virtual environment is not built here; `.ci/run` does that for the whole suite.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ce_gppo_trl import cli

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

# A line on stderr is noise when it is none of: this library's log lines, tqdm progress bars, blank.
NOISE = re.compile(r"traceback|warning|warn\(|deprecat|failed to load|writing model shards|loading weights", re.I)


def ce_gppo(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`ce-gppo ARGS` as a subprocess of this interpreter, offline, one thread, from the repository root."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "ce_gppo_trl", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    """Non-blank stderr lines, with tqdm's carriage-return redraws split into lines."""
    return [line for line in re.split(r"[\r\n]+", result.stderr) if line.strip()]


def noise(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in stderr_lines(result) if NOISE.search(line)]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("first-hour")
    result = ce_gppo(
        *("train", "--config", "configs/quickstart.yaml", "--output_dir", str(tmp / "run")),
        *("--toy_model_dir", str(tmp / "cache"), "--max_steps", "2", "--logging_steps", "1"),
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return tmp, result


def summary_commands(stdout: str) -> dict[str, list[str]]:
    """The `plot:` and `evaluate:` lines of the run summary, split as a shell would."""
    commands = dict(re.findall(r"^  (plot|evaluate): +(ce-gppo .+)$", stdout, re.M))
    assert set(commands) == {"plot", "evaluate"}, stdout[-2000:]
    return {name: shlex.split(line) for name, line in commands.items()}


def test_quickstart_trains_with_the_real_toy_model(quickstart):
    tmp, result = quickstart
    assert "training finished" in result.stdout and "(2 steps, 1 process)" in result.stdout
    assert "reward:" in result.stdout
    assert f"checkpoints:    {tmp / 'run'}/checkpoint-* (1 saved)" in result.stdout  # the last step is saved
    (model_dir,) = (tmp / "cache").iterdir()
    build = json.loads((model_dir / "toy_build.json").read_text())
    # The warm start leaves the slack RL removes: the mode is right far more often than a temperature-1 sample
    assert build["accuracy_greedy"] > 0.9 and build["accuracy_sampled"] < 0.6
    state = json.loads((tmp / "run" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2]
    assert 0.0 <= state["log_history"][0]["reward"] <= 1.0


def test_quickstart_stderr_has_no_warning_or_third_party_noise(quickstart):
    _, result = quickstart
    assert noise(result) == []
    # What is left: this library's toy-model build log and the training progress bar.
    for line in stderr_lines(result):
        assert " ce_gppo_trl." in line or "it/s]" in line or "s/it]" in line or "?it/s" in line, line


def test_the_summarys_commands_run_as_printed(quickstart):
    tmp, result = quickstart
    commands = summary_commands(result.stdout)
    run = str(tmp / "run")
    assert commands["plot"] == ["ce-gppo", "plot", run, "-o", f"{run}/training_curves.png"]
    assert commands["evaluate"][:6] == ["ce-gppo", "eval", "--model", run, "--dataset", "builtin:arithmetic"]
    for name, command in commands.items():
        done = ce_gppo(*command[1:])
        assert done.returncode == 0, f"{name}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        assert noise(done) == [], name
    assert (tmp / "run" / "training_curves.png").stat().st_size > 10_000
    report = json.loads((tmp / "run" / "eval_results.json").read_text())
    scores = report["benchmarks"]["builtin:arithmetic"]
    assert scores["num_problems"] == 1000 and 0.0 <= scores["avg@4"] <= scores["pass@4"] <= 1.0


def hide(monkeypatch, *modules: str) -> None:
    """Make `modules` look uninstalled: `find_spec` finds nothing and importing them raises ImportError."""
    find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name in modules else find_spec(name))
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize(
    ("argv", "hidden", "env", "install"),
    [
        (["plot", "RUN", "-o", "OUT/curves.png"], ("matplotlib",), {}, "pip install 'matplotlib"),
        (["train", "--use_vllm", "true"], ("vllm",), {}, "pip install 'ce-gppo-trl[vllm]'"),
        (
            ["train", "--use_peft", "true", "--load_in_4bit", "true"],
            ("bitsandbytes",),
            {},
            "pip install 'ce-gppo-trl[quantization]'",
        ),
        (["train"], ("deepspeed",), {"ACCELERATE_USE_DEEPSPEED": "true"}, "pip install 'ce-gppo-trl[deepspeed]'"),
        (
            ["eval", "--model", "MODEL", "--dataset", "builtin:arithmetic", "--backend", "vllm"],
            ("vllm",),
            {},
            "pip install 'ce-gppo-trl[vllm]'",
        ),
    ],
    ids=["plot-matplotlib", "train-vllm", "train-bitsandbytes", "train-deepspeed", "eval-vllm"],
)
def test_a_missing_optional_dependency_is_one_line_and_exit_1(
    monkeypatch, capsys, tmp_path, tiny_model_dir, argv, hidden, env, install
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 1, "reward": 0.5}]}))
    places = {"RUN": str(run), "OUT": str(tmp_path), "MODEL": tiny_model_dir}
    argv = [places.get(arg.split("/")[0], arg.split("/")[0]) + arg[len(arg.split("/")[0]) :] for arg in argv]
    if argv[0] == "train":
        argv += ["--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path / "out")]
    hide(monkeypatch, *hidden)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ce-gppo {argv[0]}: "), captured.err
    assert hidden[0] in lines[0] and install in lines[0]
    assert not (tmp_path / "out").exists()  # stopped before anything was built or trained


def test_train_help_lists_the_eval_dataset_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("--eval_dataset_name", "--eval_dataset_split", "--eval_dataset_adapter", "--num_eval_examples"):
        assert flag in shown


def test_training_evaluates_on_a_different_dataset(tiny_model_dir, tmp_path, capsys):
    """Train on the builtin task, evaluate every step on a MATH-500 file (the hub's `test.jsonl` layout)."""
    argv = ["--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path / "run"), "--max_steps", "2"]
    argv += ["--num_train_examples", "64", "--logging_steps", "1", "--save_strategy", "no"]
    argv += ["--eval_strategy", "steps", "--eval_steps", "1", "--per_device_eval_batch_size", "8"]
    argv += ["--eval_dataset_name", str(FIXTURES / "math500_test.jsonl"), "--eval_dataset_adapter", "math"]
    trainer = cli.train(*cli.parse_train_args(argv))
    eval_rows = trainer.eval_dataset
    assert eval_rows["solution"] == ["\\left( 3, \\frac{\\pi}{2} \\right)", "(1,2)"]
    # Plain-string prompts, like the builtin training prompts (the toy tokenizer has no chat template).
    assert eval_rows[1]["prompt"].startswith("Solve $x^2 < 4$ for $x > 1$.")
    evals = [entry for entry in trainer.state.log_history if "eval_reward" in entry]
    assert [entry["step"] for entry in evals] == [1, 2]
    assert all(0.0 <= entry["eval_reward"] <= 1.0 for entry in evals)
    summary = capsys.readouterr().out
    assert "eval reward by step: 1:" in summary
    # The summary's evaluate line scores the model on the eval dataset, not on the training task.
    evaluate = summary_commands(summary)["evaluate"]
    assert evaluate[evaluate.index("--dataset") + 1] == str(FIXTURES / "math500_test.jsonl")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--eval_dataset_name", "MATH-500"], r"eval_dataset_name='MATH-500' is not allowed with eval_strategy='no'"),
        (
            ["--eval_strategy", "steps", "--eval_dataset_split", "test"],
            r"eval_dataset_split='test' is not allowed without eval_dataset_name",
        ),
    ],
)
def test_eval_dataset_fields_that_would_be_ignored_are_refused(argv, match):
    script_args, training_args, _ = cli.parse_train_args(["--num_train_examples", "8", *argv])
    with pytest.raises(ValueError, match=match):
        cli.load_datasets(script_args, training_args)


@pytest.mark.parametrize(
    ("variable", "actual", "match"),
    [
        ("ACCELERATE_USE_FSDP", "MULTI_CPU", r"distributed_type=MULTI_CPU .*FSDP.*only on accelerator devices"),
        ("ACCELERATE_USE_DEEPSPEED", "MULTI_CPU", r"DeepSpeed.*--use_cpu false --ddp_backend gloo"),
        ("ACCELERATE_USE_FSDP", "NO", r"distributed_type=NO .*FSDP"),
    ],
)
def test_a_sharding_request_that_accelerate_drops_is_refused(monkeypatch, variable, actual, match):
    # accelerate 1.15 turns an FSDP / DeepSpeed launch on CPU into DDP (MULTI_CPU) or into no distribution (NO);
    # tests/test_launch_sharded.py shows it with real launches.
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ValueError, match=match):
        cli.check_distributed_backend(types.SimpleNamespace(distributed_type=f"DistributedType.{actual}"))
    cli.check_distributed_backend(types.SimpleNamespace(distributed_type=variable.rsplit("_", 1)[-1]))


def test_the_bitsandbytes_cpu_kernel_note_waits_for_a_quantized_run(caplog, monkeypatch):
    # PEFT imports bitsandbytes on every command; its "Failed to load CPU gemm_4bit_forward" line is held back
    # (ce_gppo_trl/_quiet.py) and shown once when 4-bit loading is asked for.
    from ce_gppo_trl import _quiet

    monkeypatch.setattr(_quiet, "_held", [])
    note = logging.getLogger(_quiet.BNB_CPU_KERNEL_LOGGER)
    note.warning(_quiet.BNB_CPU_KERNEL_MESSAGE + ": %s.", "No module named 'kernels'")
    note.warning("another bitsandbytes message")
    assert [record.getMessage() for record in caplog.records] == ["another bitsandbytes message"]
    cli.check_optional_dependencies(*cli.parse_train_args(["--load_in_4bit", "true", "--use_peft", "true"])[1:])
    assert caplog.records[-1].getMessage() == f"{_quiet.BNB_CPU_KERNEL_MESSAGE}: No module named 'kernels'."
    cli.check_optional_dependencies(*cli.parse_train_args([])[1:])
    assert len(caplog.records) == 2  # once
