"""The `builtin:` models: offline models built once into a cache and loaded like any local model directory.

`builtin:toy` is the quickstart's toy model (`ce_gppo_trl.toy.build_toy_model`), `builtin:smollm2-135m-instruct` the
real SmolLM2-135M-Instruct converted from a GGUF file (`ce_gppo_trl.smollm2`). `resolve_model` turns a
`model_name_or_path` into what the trainer loads: a `builtin:` name into its cached directory (built on first use),
a Hub id or a local directory unchanged. The cache is `builtin_model_dir`, else `$CE_GPPO_CACHE`, else
`~/.cache/ce_gppo_trl` (`ce_gppo_trl.cache.default_cache_dir`).

Example:
    >>> resolve_model("Qwen/Qwen2.5-0.5B", None)
    'Qwen/Qwen2.5-0.5B'
    >>> model_dir = resolve_model(TOY_MODEL, None)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .cache import default_cache_dir

if TYPE_CHECKING:
    from .config import CEGPPOConfig

TOY_MODEL = "builtin:toy"
"""`model_name_or_path` that selects the offline toy model, built once by `ce_gppo_trl.toy.build_toy_model`."""

logger = logging.getLogger(__name__)


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


def builtin_models() -> dict[str, tuple[Callable[[str | None], str], Callable[[str], str], str]]:
    """The `builtin:` models: name -> (its cache path from a cache directory, its builder, what building costs)."""
    from .smollm2 import SMOLLM2_MODEL, build_smollm2, smollm2_model_path
    from .toy import build_toy_model

    return {
        TOY_MODEL: (toy_model_path, build_toy_model, "build the toy model (once; 1-2 minutes on 2 CPU cores)"),
        SMOLLM2_MODEL: (
            smollm2_model_path,
            build_smollm2,
            "convert SmolLM2-135M-Instruct from GGUF (once; ~1 minute)",
        ),
    }


def resolve_model(
    model_name_or_path: str | None, training_args: CEGPPOConfig | None, cache_dir: str | None = None
) -> str:
    """The name or directory the trainer loads: a `builtin:` model is built (once, on the main process) and cached.

    `builtin:toy` is the quickstart's toy model, `builtin:smollm2-135m-instruct` the real SmolLM2-135M-Instruct
    (`ce_gppo_trl.smollm2`). Hub ids and local directories pass through unchanged, so they take TRL's own
    `from_pretrained` path. `training_args` orders the processes of a distributed run (None: a single process).

    Raises:
        MissingDependencyError: the builtin needs a package that is not installed (the message gives the command).
    """
    builtins = builtin_models()
    if not model_name_or_path:
        raise ValueError(
            f"model_name_or_path={model_name_or_path!r} is not allowed: expected a Hub model id, a local model "
            f"directory, or one of the offline models {', '.join(map(repr, builtins))}."
        )
    if not model_name_or_path.startswith("builtin:"):
        return model_name_or_path
    if model_name_or_path not in builtins:
        raise ValueError(
            f"model_name_or_path={model_name_or_path!r} is not allowed: the built-in models are "
            f"{', '.join(map(repr, builtins))}."
        )
    cache_path, build, what = builtins[model_name_or_path]
    path = cache_path(cache_dir)
    if training_args is None:
        return build(path)
    with training_args.main_process_first(desc=what):
        if training_args.process_index == 0 and not os.path.isdir(path):
            logger.info("%s: %s", what, path)
        return build(path)
