"""``python -m vqkit``: the ``vqkit`` command line (see :mod:`vqkit.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
