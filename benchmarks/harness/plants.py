"""The plant registry: every model + data + reward that a study trains, defined once.

A plant gives the command-line fields of `ce-gppo train` (`cli_fields`, parsed by `cli.parse_train_args` on top of
the quickstart recipe or its own `recipe`), builds its model once (`build`), and, where `ce-gppo train`'s dataset
loader cannot express its data (plain-prompt problems with a held-out set excluded), supplies the train and held-out
sets itself (`data`). `benchmarks.harness.grid.build` turns a plant, an arm and a seed into a trainer through
`cli.build_trainer`, the path users run.

- `quickstart`: the quickstart recipe as shipped (`builtin:toy` on `builtin:arithmetic`).
- `testbed`: `ce_gppo_trl.testbed` (five-digit sums with a scratchpad, 256 held-out problems), `regime.py`'s plant.
- `smollm2`: `configs/SmolLM2-135M-Instruct/ce_gppo_cpu.yaml` (LoRA, `builtin:word-problems`), the real model.
- `toy`, `qwen2-format`, `llama-digits`, `qwen2-copy`, `mistral-copy`, `qwen2-digits-wide`: the controller's plants
  (the quickstart's toy with a fixed held-out set; random-init models of other shapes with a format / digit-share /
  copy reward; the last two added for issue 31 and used for no choice of settings).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import heldout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOLLM2_RECIPE = os.path.join("configs", "SmolLM2-135M-Instruct", "ce_gppo_cpu.yaml")

# What every CPU study trains with, beside the plant's own fields and on top of the quickstart recipe: one optimizer
# update per micro-batch (so a rollout batch feeds steps_per_generation updates, all but the first off-policy, as in
# the papers), logging every step, no checkpoints, no KL, no activation checkpointing (pure cost on models of a few
# layers).
CPU_STUDY_FIELDS: dict[str, Any] = {
    "report_to": "none",
    "save_strategy": "no",
    "use_cpu": True,
    "logging_steps": 1,
    "gradient_accumulation_steps": 1,
    "temperature": 1.0,
    "beta": 0.0,
    "gradient_checkpointing": False,
}


def digit_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """The share of digits among the completion's characters (0 for an empty completion)."""
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


def copy_reward(completions: list[str], prompts: list[str], **kwargs: Any) -> list[float]:
    """The share of the prompt's characters that the completion repeats at the same position."""
    pairs = zip(prompts, completions, strict=True)
    return [sum(a == b for a, b in zip(p, c, strict=False)) / len(p) for p, c in pairs]


def format_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """1 for exactly four digits, else the share of the first four characters that are digits, minus 0.25 per extra
    character."""
    rewards = []
    for completion in completions:
        digits = sum(ch.isdigit() for ch in completion[:4]) / 4
        rewards.append(1.0 if len(completion) == 4 and digits == 1 else digits - 0.25 * max(len(completion) - 4, 0))
    return rewards


@dataclass(frozen=True)
class Plant:
    """One model + data + reward. `cli_fields(model_dir)` are `ce-gppo train` fields; `recipe` the YAML they
    override (None: the quickstart); `build(model_dir)` makes the model once; `data(seed)` returns (train, held-out)
    when the plant brings its own data, else None; `reward` is the reward's name or dotted path; `score` scores a
    held-out completion (`benchmarks.harness.heldout`)."""

    name: str
    fields: dict[str, Any]
    reward: str = "math_accuracy"
    recipe: str | None = None
    build: Callable[[str], Any] | None = None
    data: Callable[[int], tuple[Any, Any]] | None = None
    score: heldout.Score = heldout.exact_boxed

    def cli_fields(self, model_dir: str | None) -> dict[str, Any]:
        out = dict(self.fields)
        if model_dir is not None:
            out["model_name_or_path"] = model_dir
        if self.reward:
            out["reward_funcs"] = self.reward
        return out


def _build_random(spec: dict[str, Any]) -> Callable[[str], str]:
    def build(path: str) -> str:
        from ce_gppo_trl.toy import save_random_model

        if os.path.exists(os.path.join(path, "config.json")):
            return path
        return save_random_model(
            path,
            spec["model_type"],
            seed=0,
            num_key_value_heads=spec["kv_heads"],
            max_position_embeddings=64,
            tie_word_embeddings=spec["tied"],
            **spec["shape"],
        )

    return build


def _arithmetic_data(
    max_operand: int, train: int, held_out: int, exclude: bool = True
) -> Callable[[int], tuple[Any, Any]]:
    """(train, held-out) arithmetic problems; with `exclude`, no held-out prompt in the training set (the random-init
    plants score format, digits or copying, not the sum, and train on the unfiltered stream)."""

    def data(seed: int) -> tuple[Any, Any]:
        from ce_gppo_trl.toy import make_arithmetic_dataset

        held = make_arithmetic_dataset(held_out, seed=10_000, max_operand=max_operand)
        rows = make_arithmetic_dataset(train, seed=seed, max_operand=max_operand)
        if not exclude:
            return rows, held
        excluded = set(held["prompt"])
        return rows.filter(lambda row: row["prompt"] not in excluded), held

    return data


def _toy_build(path: str) -> str:
    from ce_gppo_trl.toy import BUILD_MARKER, build_toy_model

    if not os.path.exists(os.path.join(path, BUILD_MARKER)):
        build_toy_model(path)
    return path


def testbed_build(
    sft_steps: int = 600, label_smoothing: float = 0.03, hidden_size: int = 64, num_layers: int = 2, heldout: int = 256
) -> Callable[[str], dict[str, Any]]:
    """The builder of `ce_gppo_trl.testbed`'s SFT model at these settings (`regime.py`'s full or quick testbed)."""

    def build(path: str) -> dict[str, Any]:
        from ce_gppo_trl.testbed import build_testbed_model, read_build_record

        build_testbed_model(
            path,
            sft_steps=sft_steps,
            label_smoothing=label_smoothing,
            hidden_size=hidden_size,
            num_layers=num_layers,
            heldout=heldout,
        )
        return read_build_record(path)

    return build


def testbed_data(heldout: int, train: int) -> Callable[[int], tuple[Any, Any]]:
    """(train, held-out) of the testbed: the held-out problems are the same for every run, never trained on."""

    def data(seed: int) -> tuple[Any, Any]:
        from ce_gppo_trl.testbed import heldout_problems, train_problems

        held_out = heldout_problems(heldout)
        return train_problems(train, seed, exclude=set(held_out["prompt"])), held_out

    return data


RANDOM_SPECS: dict[str, dict[str, Any]] = {
    "qwen2-format": dict(
        model_type="qwen2",
        shape=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        kv_heads=2,
        tied=True,
        reward=format_reward,
        learning_rate=5e-3,
        batch=32,
        length=8,
    ),
    "llama-digits": dict(
        model_type="llama",
        shape=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4),
        kv_heads=4,
        tied=False,
        reward=digit_reward,
        learning_rate=3e-3,
        batch=32,
        length=6,
    ),
    "qwen2-copy": dict(
        model_type="qwen2",
        shape=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=8),
        kv_heads=4,
        tied=True,
        reward=copy_reward,
        learning_rate=3e-3,
        batch=32,
        length=8,
    ),
    # Two plants added for the measured-gain controller (issue 31), never used to choose any setting.
    "mistral-copy": dict(
        model_type="mistral",
        shape=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
        kv_heads=1,
        tied=False,
        reward=copy_reward,
        learning_rate=2e-3,
        batch=32,
        length=6,
    ),
    "qwen2-digits-wide": dict(
        model_type="qwen2",
        shape=dict(hidden_size=192, intermediate_size=384, num_hidden_layers=2, num_attention_heads=6),
        kv_heads=2,
        tied=False,
        reward=digit_reward,
        learning_rate=1e-3,
        batch=32,
        length=8,
    ),
}

PLANTS: dict[str, Plant] = {
    "quickstart": Plant("quickstart", {}),
    "smollm2": Plant("smollm2", {}, reward="", recipe=SMOLLM2_RECIPE),
    "testbed": Plant(
        "testbed",
        {**CPU_STUDY_FIELDS, "disable_tqdm": True, "max_completion_length": 48},
        build=testbed_build(),
        data=testbed_data(256, 2 * 80 * 64),
        score=heldout.boxed_answer,
    ),
    "toy": Plant(
        "toy",
        {
            **CPU_STUDY_FIELDS,
            "disable_tqdm": True,
            "per_device_train_batch_size": 64,
            "num_generations": 8,
            "max_completion_length": 6,
            "learning_rate": 2e-4,
        },
        build=_toy_build,
        data=_arithmetic_data(9, 4096, 20),
    ),
    **{
        name: Plant(
            name,
            {
                **CPU_STUDY_FIELDS,
                "disable_tqdm": True,
                "per_device_train_batch_size": spec["batch"],
                "num_generations": 8,
                "max_completion_length": spec["length"],
                "learning_rate": spec["learning_rate"],
            },
            reward=f"benchmarks.harness.plants.{spec['reward'].__name__}",
            build=_build_random(spec),
            data=_arithmetic_data(99, 4096, 64, exclude=False),
            score=heldout.reward_score(spec["reward"]),
        )
        for name, spec in RANDOM_SPECS.items()
    },
}
"""Plant name -> `Plant`."""
