"""Known third-party notes that a `ce-gppo` user can neither cause nor act on, kept off the command's terminal.

`quiet_third_party_notes` is called by the command-line entry point (`ce_gppo_trl.__main__.main`, behind the
`ce-gppo` script, `python -m ce_gppo_trl` and `examples/train_ce_gppo.py`) before anything imports TRL, transformers
or PEFT. Importing the library calls nothing here: a library is a guest in its user's process.

- bitsandbytes 0.50 tries to load its CPU 4-bit kernel from the Hub (through `kernels`) the moment it is imported,
  and PEFT 0.21 imports bitsandbytes eagerly (`peft/helpers.py`), as does TRL through transformers' Trainer. Offline
  or without `kernels`, that prints "Failed to load CPU gemm_4bit_forward from kernels-community", and kernels 0.19
  adds "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'" in offline mode: on every
  command, quantized or not. Both lines are held back and `replay_held_notes` shows them where 4/8-bit loading is
  asked for, the only place they matter (a slower fallback kernel for 4-bit matmuls on CPU).
- TRL 1.16 reads `model.is_gradient_checkpointing` and calls `gradient_checkpointing_enable` / `_disable` around
  every generation; transformers 5.23 deprecated those names (FutureWarning, repeated after each checkpoint save).
  The calls are inside TRL, so only the exact messages, attributed to `transformers.modeling_utils`, are ignored.
"""

from __future__ import annotations

import logging
import warnings

HELD_NOTES: dict[str, str] = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
}
"""Logger name -> the start of the message held back from it (bitsandbytes' CPU 4-bit kernel, see above)."""

_held: list[logging.LogRecord] = []


class _HoldNote(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(self.prefix):
            _held.append(record)
            return False
        return True


def quiet_third_party_notes() -> None:
    """Hold back the notes of `HELD_NOTES` and ignore TRL's deprecated gradient-checkpointing calls, for this
    process (idempotent). Called by the `ce-gppo` entry point only."""
    for name, prefix in HELD_NOTES.items():
        note_logger = logging.getLogger(name)
        if not any(isinstance(existing, _HoldNote) for existing in note_logger.filters):
            note_logger.addFilter(_HoldNote(prefix))
    warnings.filterwarnings(
        "ignore",
        message=r"`(is_gradient_checkpointing|gradient_checkpointing_(enable|disable))` is deprecated",
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )


def replay_held_notes() -> None:
    """Show the held notes (once each), for runs that load a 4-bit or 8-bit model."""
    records = list(_held)
    _held.clear()
    for record in records:
        for handler in logging.getLogger().handlers or [logging.lastResort]:
            if handler is not None and record.levelno >= handler.level:
                handler.handle(record)
