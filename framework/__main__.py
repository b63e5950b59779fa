"""``python -m framework``: see :mod:`framework.cli`."""

from framework.cli import main

if __name__ == "__main__":
    main()
