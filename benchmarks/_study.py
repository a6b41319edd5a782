"""What every CPU study trains with, so that each script sets only what it studies.

`cpu_config` is the trainer config of `entropy_dynamics.py`, `regime.py` and `controller.py`: `GRPOConfig` (TRL's own
loss) for the `"trl"` arms, `CEGPPOConfig` for the others, on CPU with one optimizer update per micro-batch.
"""

from __future__ import annotations

from typing import Any

# gradient_accumulation_steps = 1: each of the steps_per_generation micro-batches of a rollout batch is one optimizer
# update, so a rollout batch feeds steps_per_generation updates, all but the first off-policy (as in the papers).
# No activation checkpointing: TRL's default recomputes activations, pure cost on models of a few layers.
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


def cpu_config(kind: str, output_dir: str, *, seed: int, **fields: Any) -> Any:
    """The config of one CPU study run: `CPU_STUDY_FIELDS`, `seed` as both `seed` and `data_seed`, then `fields`.

    `kind` is `"trl"` for `trl.GRPOConfig`, anything else for `ce_gppo_trl.CEGPPOConfig`. A field given twice
    (here and in `fields`) is a `TypeError`, as it was when each script spelt the block out.

    Example:
        >>> args = cpu_config("ce_gppo", "/tmp/run", seed=3, max_steps=4, steps_per_generation=4)  # doctest: +SKIP
        >>> (args.data_seed, args.gradient_accumulation_steps, args.steps_per_generation)  # doctest: +SKIP
        (3, 1, 4)
    """
    from trl import GRPOConfig

    from ce_gppo_trl import CEGPPOConfig

    args_class = GRPOConfig if kind == "trl" else CEGPPOConfig
    return args_class(output_dir=output_dir, seed=seed, data_seed=seed, **CPU_STUDY_FIELDS, **fields)
