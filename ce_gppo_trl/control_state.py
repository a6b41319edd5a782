"""The entropy-control state in checkpoints: the knobs' current values, every control callback's state, and the
config fields they were computed from, in `entropy_control_state.json` beside the optimizer's state.

TRL's pattern for its own adaptive entropy state: `CEGPPOTrainer._save_checkpoint` calls `save` and
`_load_optimizer_and_scheduler` calls `load`. A resume whose config changed a field the state was computed from is
refused, since the restored state would silently override the edit.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .config import RENAMED_FIELDS

# Written into each checkpoint folder: the current knob values and every entropy-control callback's state.
ENTROPY_CONTROL_STATE = "entropy_control_state.json"
CONTROL_KNOBS = ("ce_gppo_beta1", "ce_gppo_beta2", "epsilon_low", "epsilon_high", "erc_low", "erc_high")
CONTROL_KNOBS += ("prob_clip_weight_low", "prob_clip_weight_high", "entropy_control_coef")
# The config fields the saved control state was computed from: the knobs' configured values and the callbacks'
# settings. A resume refuses a config that changed any of them, which the restored state would override.
CONTROL_CONFIG_FIELDS = (
    *("ce_gppo_beta1", "ce_gppo_beta2", "epsilon", "epsilon_high", "erc_low", "erc_high"),
    *(
        "prob_clip_weight_low",
        "prob_clip_weight_high",
        "prob_clip_schedule",
        "prob_clip_schedule_split",
        "od_min_ratio",
    ),
    *(f"{beta}_{name}" for beta in ("beta1", "beta2") for name in ("schedule", "final", "steps", "values")),
    "entropy_controller",
    *(f"entropy_controller_{name}" for name in ("target", "target_final", "actuator", "kp", "ki", "max_delta")),
    *("entropy_controller_max_rate", "entropy_controller_horizon", "entropy_controller_saturation_steps"),
    *(f"entropy_controller_{name}" for name in ("law", "rate", "measure_steps", "reference_gain")),
)


def save(folder: str, trainer: Any, callbacks: Sequence[Any]) -> None:
    """Write the knobs of `trainer`, the states of `callbacks` and the config they come from into `folder`."""
    state = {
        "config": control_config(trainer.args),
        "knobs": {name: getattr(trainer, name) for name in CONTROL_KNOBS},
        "callbacks": {key: callback.state_dict() for key, callback in keyed_callbacks(callbacks).items()},
    }
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ENTROPY_CONTROL_STATE), "w") as f:
        json.dump(state, f, indent=2)


def load(checkpoint: str, trainer: Any, callbacks: Sequence[Any]) -> bool:
    """Restore what `save` wrote into `checkpoint` onto `trainer` and `callbacks`; False if it wrote nothing."""
    path = os.path.join(checkpoint, ENTROPY_CONTROL_STATE)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        state = json.load(f)
    check_control_config(state.get("config"), trainer.args, path)
    for name, value in state["knobs"].items():
        setattr(trainer, name, value)
    saved = state["callbacks"]
    for key, callback in keyed_callbacks(callbacks).items():
        # Checkpoints written before the rename keep ProbClipScheduleCallback's state under its old name.
        key = key if key in saved else key.replace("ProbClipScheduleCallback", "EntropyScheduleCallback")
        if key in saved:
            callback.load_state_dict(saved[key])
    return True


def control_config(args: Any) -> dict[str, Any]:
    # Through JSON, so that a value compares equal to itself read back from a checkpoint (tuples become lists).
    return json.loads(json.dumps({name: getattr(args, name) for name in CONTROL_CONFIG_FIELDS}))


def check_control_config(saved: dict[str, Any] | None, args: Any, path: str) -> None:
    """Refuse a resume whose config changed a field the restored control state was computed from.

    The knobs and callback states restored from `path` would silently replace the edited values. Checkpoints
    written before the config was saved with them (no "config" entry) are not checked.
    """
    if saved is None:
        return
    saved = {RENAMED_FIELDS.get(name, name): value for name, value in saved.items()}  # older checkpoints
    current = control_config(args)
    changed = [name for name in CONTROL_CONFIG_FIELDS if name in saved and saved[name] != current[name]]
    if not changed:
        return
    name = changed[0]
    raise ValueError(
        f"{name}={getattr(args, name)!r} is not allowed when resuming from {path}, which was saved with "
        f"{name}={saved[name]!r}"
        + (f" (also changed: {', '.join(changed[1:])})" if changed[1:] else "")
        + ": the entropy-control state restored from it (the knobs' current values and the callbacks' state) "
        "would override the edited value. Resume with the checkpoint's value; to change a knob during a run, "
        "use its schedule (beta1_schedule / beta2_schedule='step' with beta*_steps and beta*_values)."
    )


def keyed_callbacks(callbacks: Sequence[Any]) -> dict[str, Any]:
    """Class name plus rank among callbacks of that class: stable as long as the run is rebuilt the same way."""
    keyed: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    for callback in callbacks:
        name = type(callback).__name__
        keyed[f"{name}.{counts[name]}"] = callback
        counts[name] += 1
    return keyed
