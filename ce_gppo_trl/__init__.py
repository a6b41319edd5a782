"""Entropy-controlling RL for LLM reasoning on top of TRL's GRPOTrainer.

`CEGPPOTrainer` / `CEGPPOConfig` add CE-GPPO (arXiv 2509.20712), the dual clip and Entropy Ratio Clipping
(arXiv 2512.05591) to `trl.GRPOTrainer`; the per-token math lives in `ce_gppo_trl.losses`. Entropy control
(scheduled and probability-dependent clip bounds, knob schedules, a closed-loop entropy controller) lives in
`ce_gppo_trl.schedules` (pure) and `ce_gppo_trl.callbacks`, diagnostics in `ce_gppo_trl.diagnostics`.
"""

from . import _quiet  # noqa: F401  (first: holds back third-party noise, see _quiet.py)
from .callbacks import EntropyControllerCallback, EntropyScheduleCallback, KnobScheduleCallback
from .config import CEGPPOConfig
from .losses import entropy_ratio_mask, gppo_policy_loss
from .trainer import CEGPPOTrainer

__version__ = "0.1.0"

__all__ = [
    "CEGPPOConfig",
    "CEGPPOTrainer",
    "EntropyControllerCallback",
    "EntropyScheduleCallback",
    "KnobScheduleCallback",
    "entropy_ratio_mask",
    "gppo_policy_loss",
]
