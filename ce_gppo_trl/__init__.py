"""Entropy-controlling RL for LLM reasoning on top of TRL's GRPOTrainer.

`CEGPPOTrainer` / `CEGPPOConfig` add CE-GPPO (arXiv 2509.20712), the dual clip and Entropy Ratio Clipping
(arXiv 2512.05591) to `trl.GRPOTrainer`; the per-token math, probability-dependent clip bounds included, lives in
`ce_gppo_trl.losses`. Entropy control (clip-bound and knob schedules, a closed-loop entropy controller) lives in
`ce_gppo_trl.schedules` and `ce_gppo_trl.controller` (pure) and `ce_gppo_trl.callbacks`, diagnostics in
`ce_gppo_trl.diagnostics`.

The names below are imported on first use, so that `import ce_gppo_trl` (and `ce-gppo --version`) does not import
TRL; importing the library changes no global state (warning filters, loggers) of its user's process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
"""The one place of the version: `pyproject.toml` reads it (`[tool.setuptools.dynamic]`)."""

_EXPORTS = {
    "CEGPPOConfig": "config",
    "CEGPPOTrainer": "trainer",
    "EntropyControllerCallback": "callbacks",
    "ProbClipScheduleCallback": "callbacks",
    "EntropyScheduleCallback": "callbacks",  # deprecated name of ProbClipScheduleCallback
    "KnobScheduleCallback": "callbacks",
    "entropy_ratio_mask": "losses",
    "gppo_policy_loss": "losses",
}

__all__ = [
    "CEGPPOConfig",
    "CEGPPOTrainer",
    "EntropyControllerCallback",
    "ProbClipScheduleCallback",
    "KnobScheduleCallback",
    "entropy_ratio_mask",
    "gppo_policy_loss",
]

if TYPE_CHECKING:
    from .callbacks import EntropyControllerCallback, KnobScheduleCallback, ProbClipScheduleCallback
    from .config import CEGPPOConfig
    from .losses import entropy_ratio_mask, gppo_policy_loss
    from .trainer import CEGPPOTrainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
