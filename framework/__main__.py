"""``python -m framework``: see :mod:`framework.cli`."""

import sys

from framework.recorder_process import prewarm

if __name__ == "__main__":
    prewarm(sys.argv[1:])  # MLflow loads in the tracking worker while the rest of the command starts
    from framework.cli import main

    main()
