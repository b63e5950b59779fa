"""The component registry: every named cell, loss, optimizer, dataset and task.

Registering a component also stores its default options in Hydra's
ConfigStore under the matching group (as fairseq does), so a registry key and
a Hydra option are the same thing: ``optim=myopt`` works for an optimizer that
an installed plugin adds, with no YAML copied into ``conf/``.

A task's :class:`Recipe` becomes a ``task`` option in the ``_global_``
package whose defaults list overrides the component groups; its tuned
hyper-parameters become ``recipe/<group>`` options named ``<task>_<component>``
that the primary config includes *optionally*, so they apply exactly when
that component is the chosen one and the command line still wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hydra.core.config_store import ConfigStore

from framework.core.config import defaults
from framework.core.errors import PluginError

COMPONENT_KINDS = ("dataset", "cell", "loss", "optim")
KINDS = ("task", *COMPONENT_KINDS)

Choice = str | tuple[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Recipe:
    """A task's reference training recipe.

    Each component is a name, or ``(name, options)`` where the options tune
    that component for this task only, e.g. ``("rprop", {"variant": "plain"})``.
    ``train`` overrides the training settings (``{"steps": 500}``).
    """

    dataset: Choice
    cell: Choice
    loss: Choice
    optim: Choice
    train: Mapping[str, Any] = field(default_factory=dict)

    def choices(self) -> dict[str, tuple[str, Mapping[str, Any]]]:
        """{group: (component name, tuned options)} for every component group."""
        picked = {kind: getattr(self, kind) for kind in COMPONENT_KINDS}
        return {kind: (c, {}) if isinstance(c, str) else c for kind, c in picked.items()}


@dataclass(frozen=True)
class Component:
    """One registered thing, and who provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config_class: type
    plugin: str
    version: str
    recipe: Recipe | None = None


class Register(Protocol):
    """The callable a registration hook receives."""

    def __call__(
        self, name: str, factory: Callable[..., Any], config_class: type, recipe: Recipe | None = None
    ) -> None: ...


class Registry:
    """Components by (kind, name), mirrored into Hydra's ConfigStore."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], Component] = {}

    def registrar(self, kind: str, plugin: str, version: str) -> Register:
        """The ``register`` callable handed to ``plugin``'s hook for ``kind``."""

        def register(name: str, factory: Callable[..., Any], config_class: type, recipe: Recipe | None = None) -> None:
            self.add(Component(kind, name, factory, config_class, plugin, version, recipe))

        return register

    def add(self, component: Component) -> None:
        """Add ``component``; a second component of the same kind and name is refused."""
        kind, name = component.kind, component.name
        where = f"{kind} {name!r} from plugin {component.plugin!r}"
        if (kind, name) in self._components:
            first = self._components[(kind, name)].plugin
            raise PluginError(f"{kind} {name!r} is registered twice: by plugin {first!r} and by {component.plugin!r}")
        if not name.isidentifier():
            raise PluginError(f"{where}: the name must be an identifier (letters, digits, _)")
        if not dataclasses.is_dataclass(component.config_class):
            raise PluginError(f"{where}: config_class must be a dataclass, got {component.config_class!r}")
        if (kind == "task") != (component.recipe is not None):
            raise PluginError(f"{where}: a task needs a recipe, and only a task has one")
        self._components[(kind, name)] = component
        _store(component)

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``."""
        try:
            return self._components[(kind, name)]
        except KeyError:
            known = ", ".join(c.name for c in self.of_kind(kind))
            raise PluginError(f"no {kind} named {name!r}; registered: {known}") from None

    def of_kind(self, kind: str) -> list[Component]:
        """Every component of ``kind``, sorted by name."""
        return sorted((c for (k, _), c in self._components.items() if k == kind), key=lambda c: c.name)

    def all(self) -> list[Component]:
        """Every component, by kind then name."""
        return [c for kind in KINDS for c in self.of_kind(kind)]

    def remove_plugin(self, plugin: str) -> None:
        """Forget every component ``plugin`` registered (and its Hydra options)."""
        for key, component in list(self._components.items()):
            if component.plugin == plugin:
                del self._components[key]
                _forget(component)


def _store(component: Component) -> None:
    """Make the component a Hydra option: ``<kind>=<name>``."""
    store = ConfigStore.instance()
    options = {"name": component.name, **defaults(component.config_class)}
    if component.recipe is None:
        store.store(group=component.kind, name=component.name, node=options)
        return
    choices = component.recipe.choices()
    overrides = [{f"override /{kind}": chosen} for kind, (chosen, _) in choices.items()]
    node = {"defaults": [*overrides, "_self_"], "task": options, "train": dict(component.recipe.train)}
    store.store(group="task", name=component.name, node=node, package="_global_")
    for kind, (chosen, tuned) in choices.items():
        if tuned:
            store.store(group=f"recipe/{kind}", name=f"{component.name}_{chosen}", node=dict(tuned))


def _forget(component: Component) -> None:
    """Remove the Hydra options :func:`_store` made for ``component``."""
    repo = ConfigStore.instance().repo
    repo.get(component.kind, {}).pop(f"{component.name}.yaml", None)
    if component.recipe is not None:
        for kind, (chosen, _) in component.recipe.choices().items():
            repo.get("recipe", {}).get(kind, {}).pop(f"{component.name}_{chosen}.yaml", None)
