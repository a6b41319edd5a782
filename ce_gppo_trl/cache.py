"""Where the `builtin:` models are built and cached: `$CE_GPPO_CACHE`, else `~/.cache/ce_gppo_trl`.

Its own module, below both the registry of the `builtin:` models (`ce_gppo_trl.builtin_models`) and the builders it
names (`ce_gppo_trl.smollm2`), so that a builder finds the cache without importing the registry that imports it.

Example:
    >>> default_cache_dir()  # doctest: +SKIP
    '/home/me/.cache/ce_gppo_trl'
"""

from __future__ import annotations

import os


def default_cache_dir() -> str:
    """`$CE_GPPO_CACHE`, else `~/.cache/ce_gppo_trl`."""
    return os.environ.get("CE_GPPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ce_gppo_trl")
