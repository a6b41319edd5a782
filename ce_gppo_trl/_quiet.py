"""Third-party messages that a user of this library can neither cause nor act on, kept off their terminal.

Imported first by `ce_gppo_trl/__init__.py`, before anything imports TRL, transformers or PEFT:

- bitsandbytes 0.50 logs "Failed to load CPU gemm_4bit_forward from kernels-community" the moment it is imported on
  a CPU with AVX512-BF16 and no `kernels` package. PEFT 0.21 imports bitsandbytes eagerly (`peft/helpers.py`), and
  transformers' Trainer imports PEFT, so with the `[quantization]` extra installed every command printed it, quantized
  or not. The line is held back here and `replay_bitsandbytes_notes` shows it where 4/8-bit loading is asked for,
  the only place it matters (a slower fallback kernel for 4-bit matmuls on CPU).
- TRL 1.16 reads `model.is_gradient_checkpointing` and calls `gradient_checkpointing_enable` / `_disable` around
  every generation; transformers 5.23 deprecated those names (FutureWarning, repeated after each checkpoint save).
  The calls are inside TRL, so only the exact messages, attributed to `transformers.modeling_utils`, are ignored.
"""

from __future__ import annotations

import logging
import warnings

BNB_CPU_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_CPU_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"

_held: list[logging.LogRecord] = []


class _HoldBitsandbytesKernelNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(BNB_CPU_KERNEL_MESSAGE):
            _held.append(record)
            return False
        return True


def replay_bitsandbytes_notes() -> None:
    """Show the held bitsandbytes CPU-kernel note (once), for runs that load a 4-bit or 8-bit model."""
    if not _held:
        return
    record = _held[0]
    _held.clear()
    for handler in logging.getLogger().handlers or [logging.lastResort]:
        if handler is not None and record.levelno >= handler.level:
            handler.handle(record)


logging.getLogger(BNB_CPU_KERNEL_LOGGER).addFilter(_HoldBitsandbytesKernelNote())
warnings.filterwarnings(
    "ignore",
    message=r"`(is_gradient_checkpointing|gradient_checkpointing_(enable|disable))` is deprecated",
    category=FutureWarning,
    module=r"transformers\.modeling_utils",
)
