"""Optional dependencies: a command that needs a package which is not installed stops with the install line.

`require` checks that a package is importable without importing it and raises `MissingDependencyError`, whose
message names the install command; the `ce-gppo` command prints it as one line with exit status 1, never a
traceback. The `*_INSTALL_HINT` constants are the install commands of the package's extras.

Example:
    >>> try:
    ...     require("no_such_module", "--backend x", "pip install x")
    ... except MissingDependencyError as error:
    ...     print(error)
    --backend x needs no_such_module, which is not installed: pip install x
"""

from __future__ import annotations

import importlib.util

VLLM_INSTALL_HINT = "pip install 'ce-gppo-trl[vllm]'"
QUANTIZATION_INSTALL_HINT = "pip install 'ce-gppo-trl[quantization]'"
DEEPSPEED_INSTALL_HINT = "pip install 'ce-gppo-trl[deepspeed]'"


class MissingDependencyError(ImportError):
    """An optional dependency a command needs is not installed; the message names the install command.

    `ce_gppo_trl.cli.main` prints it as one line (`ce-gppo <command>: <message>`) and returns exit status 1.
    """


def require(module: str, purpose: str, install: str) -> None:
    """Raise `MissingDependencyError` unless `module` is importable (checked without importing it)."""
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"{purpose} needs {module}, which is not installed: {install}")
