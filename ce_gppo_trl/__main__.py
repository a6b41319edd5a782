"""`python -m ce_gppo_trl train | eval | plot`: the `ce-gppo` console script without the script on PATH."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
