"""The words ``python -m framework <word>`` takes in place of a run.

Listings print something about the installed components (from the plugins' registry); tools are each the
``main(argv)`` of their module (with its own ``--help``). The CLI dispatches them, ``--help`` names them,
and no recording process is started early for them.
"""

from __future__ import annotations

LISTINGS = {
    "list": "every registered component (task, dataset, cell, loss, optim) with the plugin and version providing it",
    "docs": "the reference of the framework's own components (built-ins and tutorials) and their settings, as "
    "docs/components.md",
}
TOOLS = {
    "atlas": "framework.cli.atlas",  # every tutorial with every optimizer and cell: docs/atlas.md
    "migrate": "framework.tracking.migrate",  # copy runs from one tracking store to another
    "cleanup": "framework.tracking.cleanup",  # mark FAILED the RUNNING runs whose process is gone
}
SUBCOMMANDS = (*LISTINGS, *TOOLS)
