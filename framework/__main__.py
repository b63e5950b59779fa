"""``python -m framework``: see :mod:`framework.cli.main`."""

import sys

from framework.cli.subcommands import SUBCOMMANDS
from framework.tracking.connection import prewarm

if __name__ == "__main__":
    prewarm(sys.argv[1:], SUBCOMMANDS)  # MLflow loads in the recording process while the command starts
    from framework.cli.main import main

    main()
