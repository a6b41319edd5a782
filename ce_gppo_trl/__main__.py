"""The `ce-gppo` command (`ce-gppo train | eval | plot`; also `python -m ce_gppo_trl`).

The entry point quiets known third-party notes for its own process before TRL is imported (`_quiet`), then runs
`ce_gppo_trl.cli.main`. Importing the library does neither.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ce-gppo` console script; returns the exit status (see `ce_gppo_trl.cli.main`)."""
    from ._quiet import quiet_third_party_notes

    quiet_third_party_notes()
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
