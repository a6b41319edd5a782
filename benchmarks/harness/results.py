"""Writing a study's block into RESULTS.md between its markers."""

from __future__ import annotations

import os


def write_results(path: str, block: str, start: str, end: str) -> None:
    """Replace the block of `path` between the markers `start` and `end`, or append it."""
    text = open(path).read() if os.path.exists(path) else ""
    block = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    with open(path, "w") as f:
        f.write(text)
