"""Griffe extension for the API reference: this project's docstrings title their doctests `Example:`.

Griffe's Google parser knows the plural `Examples:` only, and renders an unknown title as an admonition of plain
Markdown, where a doctest's `>>>` reads as a quote and its `[1, 0, 0]` output as a link. The docstrings stay as they
are (`Example:` reads well in `help()`); the site reads them as `Examples:`.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
