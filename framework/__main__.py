"""``python -m framework``: see :mod:`framework.cli.main`."""

import sys

from framework.tracking.recorder_process import prewarm

if __name__ == "__main__":
    prewarm(sys.argv[1:])  # MLflow loads in the tracking worker while the rest of the command starts
    from framework.cli.main import main

    main()
