"""The plugin manager: built-in plugins, then installed ones, one registry.

Installed packages plug in through the entry-point group ``framework``::

    # the plugin package's pyproject.toml
    [project.entry-points.framework]
    myplugin = "myplugin"          # a module with @hookimpl functions

Environment variables:

- ``FRAMEWORK_PLUGINS``: comma-separated entry-point names to load; the others
  are skipped (an empty value loads none). Built-ins always load.
- ``FRAMEWORK_STRICT_PLUGINS=1``: a plugin that fails to import stops the
  program instead of being reported and skipped.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import traceback
from types import ModuleType
from typing import Any

import pluggy

from framework import __version__
from framework.core import hookspecs
from framework.core.errors import PluginConflictError, PluginError, described, one_line
from framework.core.registry import Registry

ENTRY_POINT_GROUP = hookspecs.PROJECT
ONLY_ENV = "FRAMEWORK_PLUGINS"
STRICT_ENV = "FRAMEWORK_STRICT_PLUGINS"

# The host is built of plugins too: registered exactly like installed ones. The observers of runs
# (tracking, the progress bar) belong to the layers above and are added by them (framework.cli.host).
DEFAULT_PLUGINS = ("framework.nn.cells", "framework.nn.losses", "framework.nn.optimizers")
BUILTIN = "framework."  # the prefix of every built-in plugin's name: the framework's own code

REGISTRATION_HOOKS = {
    "task": "framework_register_tasks",
    "dataset": "framework_register_datasets",
    "cell": "framework_register_cells",
    "loss": "framework_register_losses",
    "optim": "framework_register_optimizers",
}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the registry of the components its plugins provide."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.registry = Registry()

    def add(self, plugin: object, name: str, version: str = __version__) -> None:
        """Register ``plugin`` under ``name`` and collect the components it registers.

        A hook that does not match its spec, a registration hook that raises (or calls ``sys.exit``) and a conflict
        (a duplicate name) raise :class:`PluginError` in one line naming the plugin, and leave the manager as it was.
        """
        try:
            self.register(plugin, name=name)
        except pluggy.PluginValidationError as error:
            raise PluginError(f"plugin {name!r} does not fit the framework's hooks: {one_line(error)}") from None
        try:
            for kind, hook_name in REGISTRATION_HOOKS.items():
                for impl in getattr(self.hook, hook_name).get_hookimpls():
                    if impl.plugin is plugin:
                        try:
                            impl.function(register=self.registry.registrar(kind, name, version))
                        except PluginError:
                            raise
                        except (Exception, SystemExit) as error:
                            raise PluginError(f"plugin {name!r} failed in {hook_name}: {described(error)}") from None
        except PluginError:
            self.remove(name)
            raise

    def remove(self, name: str) -> None:
        """Unregister the plugin ``name`` and forget its components."""
        self.registry.remove_plugin(name)
        self.unregister(name=name)

    def culprit(self, error: BaseException) -> tuple[str, str] | None:
        """The installed plugin whose code raised ``error``, and the function the framework called in it.

        That is the innermost plugin on the traceback, and its outermost function
        there (a hook, a component's method); None when no installed plugin's
        code is on it. Built-in plugins are the framework's own code: not named.
        """
        modules = {
            plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__: name
            for name, plugin in self.list_name_plugin()
            if not name.startswith(BUILTIN)
        }

        def owner(module: str) -> str | None:
            return next((name for m, name in modules.items() if module == m or module.startswith(m + ".")), None)

        named: list[tuple[str, Any]] = []
        while error is not None and not named:  # the error, else its cause (sys.exit's SystemExit)
            frames = traceback.walk_tb(error.__traceback__)
            named = [(plugin, frame) for frame, _ in frames if (plugin := owner(frame.f_globals.get("__name__", "")))]
            error = error.__cause__
        if not named:
            return None
        plugin = named[-1][0]
        entry = next(frame for name, frame in named if name == plugin)
        return plugin, getattr(entry.f_code, "co_qualname", entry.f_code.co_name)


def load_entry_points(pm: PluginManager, strict: bool, only: set[str] | None) -> None:
    """Register every installed plugin of the entry-point group (or those in ``only``)."""
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if only is not None and entry_point.name not in only:
            continue
        dist = entry_point.dist
        version = dist.version if dist else "unknown"
        try:
            plugin = entry_point.load()
        except (Exception, SystemExit) as error:  # a broken plugin must not take the host down
            skip(f"plugin {entry_point.name!r} ({entry_point.value}) failed to import: {described(error)}", strict)
            continue
        if pm.is_registered(plugin):
            continue
        try:
            pm.add(plugin, entry_point.name, version)
        except PluginConflictError:
            raise
        except PluginError as error:
            skip(str(error), strict)


def skip(message: str, strict: bool) -> None:
    """A plugin that cannot be loaded: fatal when ``strict``, else a warning line and the plugin skipped."""
    if strict:
        raise PluginError(message)
    print(f"framework: warning: {message}; skipped (set {STRICT_ENV}=1 to make this fatal)", file=sys.stderr)


def create_manager() -> PluginManager:
    """A plugin manager with the built-ins and the installed plugins loaded."""
    pm = PluginManager()
    for spec in DEFAULT_PLUGINS:
        module_name, _, attribute = spec.partition(":")
        module: ModuleType = importlib.import_module(module_name)
        pm.add(getattr(module, attribute) if attribute else module, spec)
    only_env = os.environ.get(ONLY_ENV)
    only = None if only_env is None else {n.strip() for n in only_env.split(",") if n.strip()}
    strict = os.environ.get(STRICT_ENV, "") not in ("", "0")
    load_entry_points(pm, strict, only)
    for _pairing, problem in pm.registry.check_pairings():  # each is dropped: its task and component still work
        skip(problem, strict)
    return pm


_manager: PluginManager | None = None


def manager() -> PluginManager:
    """The process's plugin manager, created and loaded on first use: its registry is the one Hydra composes runs
    from (:mod:`framework.core.hydra_source`)."""
    global _manager
    if _manager is None:
        _manager = create_manager()
    return _manager
