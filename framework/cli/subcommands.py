"""The words ``python -m framework <word>`` takes in place of a run.

Listings print something about the installed components (from the plugins' registry); tools work
on tracking stores and need no plugins, each the ``main(argv)`` of the module of its name. The CLI
dispatches them, ``--help`` names them, and the recorder's prewarm starts no server for them.
"""

from __future__ import annotations

LISTINGS = {
    "list": "every registered component (task, dataset, cell, loss, optim) with the plugin and version providing it",
    "docs": "the reference of every registered component and its settings, as docs/components.md",
}
TOOLS = ("migrate", "cleanup")  # each with its own --help
SUBCOMMANDS = (*LISTINGS, *TOOLS)
