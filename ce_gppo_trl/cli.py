"""The command line: `ce-gppo train | eval | plot`, and the `train` function behind every launch.

`ce-gppo train --config recipe.yaml [--field value ...]` and `accelerate launch examples/train_ce_gppo.py --config
recipe.yaml` run the same code: `make_parser` (TRL's `TrlParser` over `CEGPPOScriptArguments`, `CEGPPOConfig` and
TRL's `ModelConfig`) then `train`. A recipe is a flat YAML mapping of those dataclasses' fields; command-line flags
override it. `ce-gppo train` with no `--config` runs the offline quickstart (`QUICKSTART`).

Example:
    ```bash
    ce-gppo train                                    # the quickstart: toy model, arithmetic, ~5 min on 2 CPU cores
    ce-gppo train --config configs/quickstart.yaml --output_dir runs/qs --max_steps 20
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/train_ce_gppo.py \\
        --config configs/DeepSeek-R1-Distill-Qwen-1.5B/ce_gppo.yaml
    ```
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from .config import CEGPPOConfig

TOY_MODEL = "builtin:toy"
"""`model_name_or_path` that selects the offline toy model, built once by `ce_gppo_trl.toy.build_toy_model`."""

logger = logging.getLogger(__name__)

VLLM_INSTALL_HINT = "pip install 'ce-gppo-trl[vllm]'"

# The offline quickstart, field by field: what `ce-gppo train` runs without `--config`. configs/quickstart.yaml holds
# the same values (tests/test_cli.py checks that they agree) so that users can copy and edit it.
QUICKSTART: dict[str, Any] = {
    "model_name_or_path": TOY_MODEL,
    "dataset_name": "builtin:arithmetic",
    "num_train_examples": 4096,
    "reward_funcs": ["math_accuracy"],
    "output_dir": "outputs/quickstart",
    "loss_type": "ce_gppo",
    "ce_gppo_beta1": 0.5,
    "ce_gppo_beta2": 1.0,
    "beta": 0.0,
    "use_cpu": True,
    "bf16": False,
    "activation_checkpointing": False,
    "per_device_train_batch_size": 64,
    "gradient_accumulation_steps": 1,
    "num_generations": 8,
    "steps_per_generation": 4,
    "max_completion_length": 6,
    "temperature": 1.0,
    "learning_rate": 2.0e-4,
    "lr_scheduler_type": "constant",
    "max_steps": 80,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 40,
    "save_total_limit": 1,
    "report_to": "none",
    "seed": 0,
}


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
        toy_model_dir (`str` or `None`):
            Where `builtin:toy` is built and cached; None: `$CE_GPPO_CACHE` or `~/.cache/ce_gppo_trl`.
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
        metadata={"help": "Buffer (tokens) of the 'overlong' reward; None: 20% of max_completion_length."},
    )
    rollout_func: str | None = field(
        default=None,
        metadata={"help": "Dotted import path of a TRL rollout_func(prompts, trainer) replacing generation."},
    )
    toy_model_dir: str | None = field(
        default=None,
        metadata={"help": "Cache directory for the builtin:toy model; None: $CE_GPPO_CACHE or ~/.cache/ce_gppo_trl."},
    )


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

    Without `--config`, the values of `QUICKSTART` are the defaults.
    """
    parser = make_parser()
    argv = list(argv)
    if "--config" not in argv:
        unknown = parser.set_defaults_with_config(**QUICKSTART)
        if unknown:
            raise ValueError(f"QUICKSTART has fields no parser dataclass declares: {unknown}")
    return parser.parse_args_and_config(argv)


def default_cache_dir() -> str:
    """`$CE_GPPO_CACHE`, else `~/.cache/ce_gppo_trl`."""
    return os.environ.get("CE_GPPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ce_gppo_trl")


def toy_model_path(cache_dir: str | None = None) -> str:
    """Directory of the cached toy model, named after the builder's default arguments so a retuned builder rebuilds."""
    from .toy import build_toy_model

    defaults = {
        name: p.default
        for name, p in inspect.signature(build_toy_model).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    digest = hashlib.sha256(json.dumps(defaults, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return os.path.join(cache_dir or default_cache_dir(), f"toy-model-{digest}")


def resolve_model(model_name_or_path: str | None, training_args: CEGPPOConfig, toy_model_dir: str | None) -> str:
    """The name or directory the trainer loads: `builtin:toy` is built (once, on the main process) and cached.

    Hub ids and local directories pass through unchanged, so they take TRL's own `from_pretrained` path.
    """
    if not model_name_or_path:
        raise ValueError(
            f"model_name_or_path={model_name_or_path!r} is not allowed: expected a Hub model id, a local model "
            f"directory, or {TOY_MODEL!r} for the offline toy model."
        )
    if model_name_or_path.startswith("builtin:"):
        if model_name_or_path != TOY_MODEL:
            raise ValueError(
                f"model_name_or_path={model_name_or_path!r} is not allowed: the only built-in model is {TOY_MODEL!r}."
            )
        from .toy import build_toy_model

        path = toy_model_path(toy_model_dir)
        with training_args.main_process_first(desc="build the toy model"):
            if training_args.process_index == 0 and not os.path.isdir(path):
                logger.info("building the toy model in %s (once; 1-2 minutes on 2 CPU cores)", path)
            return build_toy_model(path)
    return model_name_or_path


def check_vllm(training_args: CEGPPOConfig) -> None:
    """Fail early, with the install line, when a recipe asks for vLLM that is not installed."""
    if training_args.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ValueError(
            f"use_vllm=True (vllm_mode={training_args.vllm_mode!r}) is not allowed: vLLM is not installed. "
            f"Install it with `{VLLM_INSTALL_HINT}` (needs a CUDA GPU), or set use_vllm: false to generate with "
            "transformers."
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
    """Train and (when `eval_strategy` is not "no") eval datasets through `ce_gppo_trl.data.load_math_dataset`."""
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
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = load_math_dataset(script_args.dataset_name, split=script_args.dataset_test_split, **common)
    return train_dataset, eval_dataset


def check_model_args(model_args: ModelConfig) -> None:
    """Refuse combinations that cannot train: a quantized base model needs LoRA adapters on top."""
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        bits = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
        raise ValueError(
            f"{bits}=True with use_peft=False is not allowed: quantized weights cannot be trained directly; "
            "set use_peft: true (QLoRA) or drop the quantization."
        )


def _setup_logging(training_args: CEGPPOConfig) -> None:
    # An entry point, so it may configure logging: this library's progress (the toy model build) on the main process.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger(__package__).setLevel(logging.INFO if training_args.process_index == 0 else logging.WARNING)


def train(script_args: CEGPPOScriptArguments, training_args: CEGPPOConfig, model_args: ModelConfig) -> Any:
    """Load model, data, rewards and optional PEFT / quantization, train with `CEGPPOTrainer`, save, summarise.

    Returns the trainer. Hub ids, local directories and `builtin:toy` all load through TRL's `from_pretrained` path
    with `model_init_kwargs` built from `ModelConfig` (revision, dtype, attention implementation).

    Example:
        >>> trainer = train(*parse_train_args(["--max_steps", "2", "--output_dir", "/tmp/qs"]))  # doctest: +SKIP
    """
    from .trainer import CEGPPOTrainer

    start = time.perf_counter()
    _setup_logging(training_args)
    check_vllm(training_args)
    check_model_args(model_args)
    reward_funcs = build_reward_funcs(script_args, training_args)
    model = resolve_model(model_args.model_name_or_path, training_args, script_args.toy_model_dir)
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
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.accelerator.is_main_process:
        print(summarize(trainer, time.perf_counter() - start, model_args))
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    # Free the DDP wrapper (its reducer holds the process group) while every process still has the group: torch 2.13's
    # gloo group, destroyed first and freed later with the reducer, can hang one rank at exit once the others are gone.
    trainer.accelerator.wait_for_everyone()
    trainer.model_wrapped = trainer.model
    trainer.accelerator._models.clear()
    gc.collect()
    trainer.end()
    return trainer


def _reward_curve(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(entry["step"], entry["reward"]) for entry in log_history if "reward" in entry]


def summarize(trainer: Any, seconds: float, model_args: ModelConfig) -> str:
    """The end-of-run summary: time, reward at the first and last logging step, where model, logs and metrics are."""
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
    if curve:
        (first_step, first), (last_step, last) = curve[0], curve[-1]
        lines.append(f"  reward: {first:.3f} (step {first_step}) -> {last:.3f} (step {last_step})")
        lines.append("  reward by step: " + ", ".join(f"{s}:{r:.2f}" for s, r in curve))
    entropy = [entry["entropy"] for entry in trainer.state.log_history if "entropy" in entry]
    if entropy and all(math.isfinite(value) for value in entropy):
        lines.append(f"  entropy: {entropy[0]:.3f} -> {entropy[-1]:.3f}")
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
    lines += [
        f"  {kind}:{' ' * (14 - len(kind))}{out}",
        f"  metrics (log):  {os.path.join(out, 'trainer_state.json')} (log_history)",
        f"  checkpoints:    {out}/checkpoint-*",
        f"  plot:           ce-gppo plot {out} -o {os.path.join(out, 'training_curves.png')}",
        f"  evaluate:       ce-gppo eval --model {out} --dataset <benchmark> (see ce-gppo eval --help)",
        "=" * 72,
    ]
    return "\n".join(lines)


USAGE = """usage: ce-gppo {train,eval,plot} [args ...]

  train   RL-train with CE-GPPO: `ce-gppo train --config recipe.yaml [--field value ...]`;
          without --config, the offline quickstart (toy model, arithmetic, CPU, a few minutes)
  eval    evaluate a model on math benchmarks (ce_gppo_trl.evaluation)
  plot    plot training metrics (ce_gppo_trl.plotting)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ce-gppo` console script: dispatch `train`, `eval` and `plot`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        train(*parse_train_args(rest))
        return 0
    if command in ("eval", "plot"):
        module = importlib.import_module(f".{'evaluation' if command == 'eval' else 'plotting'}", __package__)
        result = module.main(rest)
        return int(result or 0)
    print(f"ce-gppo: unknown command {command!r}; expected one of train, eval, plot.\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
