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

from ce_gppo_trl import cli, optional

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

# What this library answers for on stderr: a traceback, its own log lines at WARNING or above, and Python warnings
# attributed to its own code (a call of ours that a neighbour deprecates is attributed to us by `stacklevel`).
# Another package's line, which a neighbour's release can add any day and the user can neither cause nor act on, is
# shown in the test's output, not failed on.
TRACEBACK = re.compile(r"^Traceback \(most recent call last\)")
OUR_WARNING_LOG = re.compile(r"\b(WARNING|ERROR|CRITICAL) ce_gppo_trl\.")
PYTHON_WARNING = re.compile(r"^(?P<file>\S+\.py):\d+: \w*Warning: ")
PACKAGE = ROOT / "ce_gppo_trl"


def ce_gppo(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`ce-gppo ARGS` as a subprocess of this interpreter, offline, one thread, from the repository root."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "default",  # every warning once per place, DeprecationWarning included
    }
    command = [sys.executable, "-m", "ce_gppo_trl", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    """Non-blank stderr lines, with tqdm's carriage-return redraws split into lines."""
    return [line for line in re.split(r"[\r\n]+", result.stderr) if line.strip()]


def ours_to_fix(result: subprocess.CompletedProcess) -> list[str]:
    """The stderr lines this library answers for (see `TRACEBACK`, `OUR_WARNING_LOG`, `PYTHON_WARNING`)."""
    lines = stderr_lines(result)
    for line in lines:
        print("stderr:", line)  # the rest, third-party lines included, for the reader of a failing run
    ours = [line for line in lines if TRACEBACK.match(line) or OUR_WARNING_LOG.search(line)]
    for match in filter(None, map(PYTHON_WARNING.match, lines)):
        if Path(match["file"]).resolve().is_relative_to(PACKAGE):
            ours.append(match.string)
    return ours


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("first-hour")
    result = ce_gppo(
        *("train", "--config", "configs/quickstart.yaml", "--output_dir", str(tmp / "run")),
        *("--builtin_model_dir", str(tmp / "cache"), "--max_steps", "2", "--logging_steps", "1"),
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


def test_quickstart_stderr_has_no_traceback_and_no_warning_of_ours(quickstart):
    _, result = quickstart
    assert ours_to_fix(result) == []
    # The notes the `ce-gppo` entry point holds back (bitsandbytes' CPU 4-bit kernel: a non-quantized run does not
    # care) stay off the terminal; a note of another package that nobody holds back is not failed on.
    from ce_gppo_trl._quiet import HELD_NOTES

    assert not [line for line in stderr_lines(result) if any(note in line for note in HELD_NOTES.values())]


def test_the_summarys_commands_run_as_printed(quickstart):
    tmp, result = quickstart
    commands = summary_commands(result.stdout)
    run = str(tmp / "run")
    assert commands["plot"] == ["ce-gppo", "plot", run, "-o", f"{run}/training_curves.png"]
    assert commands["evaluate"][:6] == ["ce-gppo", "eval", "--model", run, "--dataset", "builtin:arithmetic"]
    for name, command in commands.items():
        done = ce_gppo(*command[1:])
        assert done.returncode == 0, f"{name}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        assert ours_to_fix(done) == [], name
    assert (tmp / "run" / "training_curves.png").stat().st_size > 10_000
    report = json.loads((tmp / "run" / "eval_results.json").read_text())
    scores = report["benchmarks"]["builtin:arithmetic"]
    assert scores["num_problems"] == 1000 and 0.0 <= scores["avg@4"] <= scores["pass@4"] <= 1.0


def hide(monkeypatch, *modules: str) -> None:
    """Make `modules` look uninstalled: `find_spec` finds nothing and importing them raises ImportError."""
    find_spec = optional.importlib.util.find_spec
    monkeypatch.setattr(
        optional.importlib.util, "find_spec", lambda name, *a: None if name in modules else find_spec(name)
    )
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


def test_the_held_notes_wait_for_a_quantized_run(caplog, monkeypatch):
    # bitsandbytes (imported by PEFT on every command) and kernels print notes about bitsandbytes' CPU 4-bit kernel;
    # the `ce-gppo` entry point holds them back (ce_gppo_trl/_quiet.py) and shows them once when 4-bit loading is
    # asked for.
    from ce_gppo_trl import _quiet

    monkeypatch.setattr(_quiet, "_held", [])
    (bnb_logger, bnb_note), (kernels_logger, kernels_note) = _quiet.HELD_NOTES.items()
    for name in (bnb_logger, kernels_logger):
        monkeypatch.setattr(logging.getLogger(name), "filters", [])  # this test's own filters, removed after it
    _quiet.quiet_third_party_notes()
    _quiet.quiet_third_party_notes()  # idempotent: one filter per logger
    assert [len(logging.getLogger(name).filters) for name in (bnb_logger, kernels_logger)] == [1, 1]
    logging.getLogger(bnb_logger).warning(bnb_note + ": %s.", "No module named 'kernels'")
    logging.getLogger(kernels_logger).warning(kernels_note + " because Hugging Face Hub is in offline mode.")
    logging.getLogger(bnb_logger).warning("another bitsandbytes message")
    assert [record.getMessage() for record in caplog.records] == ["another bitsandbytes message"]
    cli.check_optional_dependencies(*cli.parse_train_args(["--load_in_4bit", "true", "--use_peft", "true"])[1:])
    assert [record.getMessage() for record in caplog.records[1:]] == [
        f"{bnb_note}: No module named 'kernels'.",
        f"{kernels_note} because Hugging Face Hub is in offline mode.",
    ]
    cli.check_optional_dependencies(*cli.parse_train_args([])[1:])
    assert len(caplog.records) == 3  # once


def test_importing_the_library_changes_no_global_warning_or_logging_state():
    """`import ce_gppo_trl` and every module of it, after its dependencies: warning filters, logger levels, handlers
    and filters are as they were (a library is a guest in its user's process; only the `ce-gppo` command quiets)."""
    script = """
import importlib, logging, pkgutil, warnings
import torch, transformers, accelerate, peft, datasets, math_verify, matplotlib, trl
from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser
def state():
    loggers = {"": logging.getLogger(), **logging.Logger.manager.loggerDict}
    return repr(warnings.filters), {
        name: (lg.level, [id(h) for h in lg.handlers], [id(f) for f in lg.filters], lg.propagate, lg.disabled)
        for name, lg in loggers.items() if isinstance(lg, logging.Logger)
    }
filters, loggers = state()
import ce_gppo_trl
names = [m.name for m in pkgutil.walk_packages(ce_gppo_trl.__path__, "ce_gppo_trl.")]
for name in names:
    importlib.import_module(name)
ce_gppo_trl.CEGPPOTrainer, ce_gppo_trl.CEGPPOConfig
after_filters, after_loggers = state()
assert after_filters == filters, set(after_filters.split("), (")) ^ set(filters.split("), ("))
changed = {n: (loggers[n], s) for n, s in after_loggers.items() if n in loggers and loggers[n] != s}
assert not changed, changed
added = {n: s for n, s in after_loggers.items() if n not in loggers and (s[0] or s[1] or s[2])}
assert not added, added  # a logger first made by this import has no level, handler or filter
print(len(names), "modules")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert int(result.stdout.split()[0]) >= 20  # every module was imported, cli and __main__ among them
