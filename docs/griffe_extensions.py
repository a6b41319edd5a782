"""Griffe extension for the API reference: this project's docstrings title their doctests `Example:`.

Griffe's Google parser knows the plural `Examples:` only, and renders an unknown title as an admonition of plain
Markdown, where a doctest's `>>>` reads as a quote and its `[1, 0, 0]` output as a link. The docstrings stay as they
are (`Example:` reads well in `help()`); the site reads them as `Examples:`, and drops the brackets of
Hugging Face's doc-builder links.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)
# TRL's docstrings (and this project's, in its style) link with Hugging Face's doc-builder syntax [`Name`], which
# MkDocs would show with its brackets.
_HF_LINK = re.compile(r"\[(`[^`\]]+`)\](?![(\[])")


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HF_LINK.sub(r"\1", _EXAMPLE.sub(r"\1Examples:", obj.docstring.value))
