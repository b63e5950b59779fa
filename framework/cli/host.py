"""The host: the plugin manager of a command or a Python session, with the observers of its runs.

The core's manager (:func:`framework.core.plugins.manager`) holds the components; the layers above add
the observers that record and show runs: MLflow tracking and the progress bar. They are plugins like any
other (``framework_run_started`` ... ``framework_run_ended``), registered once.
"""

from __future__ import annotations

from framework.cli.progress import progress
from framework.core import hydra_source, plugins
from framework.tracking.observer import tracker

OBSERVERS = {"framework.tracking.observer:tracker": tracker, "framework.cli.progress:progress": progress}


def manager() -> plugins.PluginManager:
    """The process's plugin manager with the observers registered, its components Hydra's options."""
    hydra_source.register()
    pm = plugins.manager()
    for name, observer in OBSERVERS.items():
        if not pm.has_plugin(name):
            pm.add(observer, name)
    return pm
