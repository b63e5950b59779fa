"""``python -m framework``: see :mod:`framework.cli.main`."""

import gc
import sys

from framework.cli.subcommands import SUBCOMMANDS
from framework.tracking.connection import prewarm

if __name__ == "__main__":
    gc.disable()  # until the run starts (framework.cli.main.collect_from_here): start-up's cycles cost 50-60 ms
    prewarm(sys.argv[1:], SUBCOMMANDS)  # MLflow loads in the recording process while the command starts
    from framework.cli.main import main

    main()
