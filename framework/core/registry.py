"""The component registry: every named cell, loss, optimizer, dataset and task, and the recipes that pair them.

Every registered component is also a Hydra option of the matching group,
served from here by :mod:`framework.core.hydra_source`, so a registry key and
a Hydra option are the same thing: ``optim=myopt`` works for an optimizer that
an installed plugin adds, with no YAML copied into ``conf/``.

A task's :class:`Recipe` becomes a ``task`` option in the ``_global_``
package whose defaults list overrides the component groups and sets the
training regime. A :class:`Pairing` is the tuned recipe of one component on
one task (``optim=adam`` on the adder: its learning rate, a batch size, the
steps): it becomes the ``recipe/<group>`` option ``<task>_<component>``, in
the ``_global_`` package, that the primary config includes *optionally*
after the task, so it applies exactly when that component is chosen for
that task, over the task's regime, and the command line still wins. A task
registers pairings for the components it knows (its recipe's ``pairings``),
a component for the tasks it knows (``register(..., recipes={task: ...})``);
the task's own choices in its recipe are its reference pairings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from framework.core.config import defaults, field_types
from framework.core.errors import PluginConflictError, PluginError
from framework.core.settings import TrainSettings

COMPONENT_KINDS = ("dataset", "cell", "loss", "optim")
KINDS = ("task", *COMPONENT_KINDS)
RECIPE = "recipe"  # the recipes' Hydra groups: recipe/<kind>, one option per pairing of that kind
GROUPS = (*KINDS, RECIPE)  # the registry's top-level Hydra groups
GLOBAL = "_global_"  # the package of a task's and a pairing's options: they set keys anywhere in the config
PAIRED_KINDS = ("cell", "optim")  # the components a pairing tunes: what a user changes one at a time

Choice = str | tuple[str, Mapping[str, Any]]
Settings = Mapping[str, Any]  # dotted keys of the config and their values: {"optim.lr": 0.03, "train.steps": 1000}


@dataclass(frozen=True)
class Recipe:
    """A task's reference training recipe, and its pairings.

    Each component is a name, or ``(name, options)`` where the options tune
    that component for this task only, e.g. ``("rprop", {"variant": "plain"})``.
    ``train`` overrides the training settings (``{"steps": 500}``).
    ``pairings``: for another component (``"optim=adam"``), the settings that make the task reach its result
    with it: the component's options, ``train.*`` and the task's own (``task.*``), as dotted keys.
    ``unreachable``: for a component that cannot reach the task's result whatever the settings, why (with the
    numbers measured), e.g. ``{"cell=lstm": "its output is bounded by 1 ..."}``.
    """

    dataset: Choice
    cell: Choice
    loss: Choice
    optim: Choice
    train: Mapping[str, Any] = field(default_factory=dict)
    pairings: Mapping[str, Settings] = field(default_factory=dict)
    unreachable: Mapping[str, str] = field(default_factory=dict)

    def choices(self) -> dict[str, tuple[str, Mapping[str, Any]]]:
        """{group: (component name, tuned options)} for every component group."""
        picked = {kind: getattr(self, kind) for kind in COMPONENT_KINDS}
        return {kind: (c, {}) if isinstance(c, str) else c for kind, c in picked.items()}


@dataclass(frozen=True)
class Pairing:
    """The tuned recipe of one component on one task, or why there can be none (``unreachable``)."""

    task: str
    kind: str
    component: str
    settings: Settings  # dotted keys: the component's options, train.*, task.*
    plugin: str
    unreachable: str | None = None

    @property
    def choice(self) -> str:
        """``optim=adam``: the command line that selects it."""
        return f"{self.kind}={self.component}"

    @property
    def name(self) -> str:
        """Its Hydra option: ``recipe/<kind>=<task>_<component>``."""
        return f"{self.task}_{self.component}"


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
    """The callable a registration hook receives.

    A task passes its ``recipe``; any other component may pass ``recipes``: for each task it was tuned on,
    the settings that make that task reach its result with it (dotted keys, as :attr:`Recipe.pairings`).
    """

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        config_class: type,
        recipe: Recipe | None = None,
        recipes: Mapping[str, Settings] | None = None,
    ) -> None: ...


class Registry:
    """Components by (kind, name) and their pairings, each also a Hydra option (:meth:`option`)."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], Component] = {}
        self._pairings: dict[tuple[str, str, str], Pairing] = {}  # (task, kind, component) -> pairing

    def registrar(self, kind: str, plugin: str, version: str) -> Register:
        """The ``register`` callable handed to ``plugin``'s hook for ``kind``."""

        def register(
            name: str,
            factory: Callable[..., Any],
            config_class: type,
            recipe: Recipe | None = None,
            recipes: Mapping[str, Settings] | None = None,
        ) -> None:
            if recipes and kind not in PAIRED_KINDS:
                raise PluginError(f"{kind} {name!r} from plugin {plugin!r}: only a cell or an optimizer has recipes")
            self.add(Component(kind, name, factory, config_class, plugin, version, recipe))
            for task, settings in (recipes or {}).items():
                self.pair(Pairing(task, kind, name, dict(settings), plugin))

        return register

    def add(self, component: Component) -> None:
        """Add ``component``; a second component of the same kind and name is refused."""
        kind, name = component.kind, component.name
        where = f"{kind} {name!r} from plugin {component.plugin!r}"
        if (kind, name) in self._components:
            first = self._components[(kind, name)].plugin
            raise PluginConflictError(
                f"{kind} {name!r} is registered twice: by plugin {first!r} and by {component.plugin!r}"
            )
        if not name.isidentifier():
            raise PluginError(f"{where}: the name must be an identifier (letters, digits, _)")
        if not dataclasses.is_dataclass(component.config_class):
            raise PluginError(f"{where}: config_class must be a dataclass, got {component.config_class!r}")
        if (kind == "task") != (component.recipe is not None):
            raise PluginError(f"{where}: a task needs a recipe, and only a task has one")
        self._components[(kind, name)] = component
        if component.recipe is not None:
            for pairing in task_pairings(component):
                self.pair(pairing)

    def pair(self, pairing: Pairing) -> None:
        """Add ``pairing``; a second one of the same task and component is refused."""
        key = (pairing.task, pairing.kind, pairing.component)
        if key in self._pairings:
            first = self._pairings[key].plugin
            raise PluginConflictError(
                f"recipe {pairing.name} ({pairing.choice} on task {pairing.task}) is registered twice: by plugin "
                f"{first!r} and by {pairing.plugin!r}"
            )
        if pairing.kind not in COMPONENT_KINDS:
            raise PluginError(f"recipe {pairing.name} from plugin {pairing.plugin!r}: no such kind {pairing.kind!r}")
        self._pairings[key] = pairing

    def pairing(self, task: str, kind: str, component: str) -> Pairing | None:
        """The pairing of ``component`` (of ``kind``) on ``task``, if one is registered."""
        return self._pairings.get((task, kind, component))

    def pairings(self) -> list[Pairing]:
        """Every pairing, by task, kind and component."""
        return [self._pairings[key] for key in sorted(self._pairings)]

    def check_pairings(self) -> Iterator[tuple[Pairing, str]]:
        """Drop, and yield with the reason, every pairing that names an option its task, component or the training
        settings do not have (its task and component registered: a recipe for an absent one is never used)."""
        for pairing in self.pairings():
            component, task = (pairing.kind, pairing.component), ("task", pairing.task)
            if component not in self._components or task not in self._components:
                continue
            owners = {
                "train": TrainSettings,
                pairing.kind: self._components[component].config_class,
                "task": self._components[task].config_class,
            }
            for key in pairing.settings:
                head, _, rest = key.partition(".")
                if head in owners:
                    problem = unknown_option(owners[head], rest, head)
                else:
                    problem = f"{key}: no such option; accepted: keys under {', '.join(sorted(owners))}"
                if problem:
                    self.drop(pairing)
                    where = f"recipe {pairing.name} ({pairing.choice} on task {pairing.task})"
                    yield pairing, f"plugin {pairing.plugin!r}: {where}: {problem}"
                    break

    def drop(self, pairing: Pairing) -> None:
        """Forget ``pairing`` (and so its Hydra option)."""
        self._pairings.pop((pairing.task, pairing.kind, pairing.component), None)

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

    def options(self, group: str) -> list[str]:
        """The Hydra options of ``group``: a kind's component names, or ``recipe/<kind>``'s usable pairings."""
        if group in KINDS:
            return [c.name for c in self.of_kind(group)]
        kind = group.removeprefix(f"{RECIPE}/")
        return [p.name for p in self.pairings() if p.kind == kind and p.unreachable is None] if kind != group else []

    def option(self, group: str, name: str) -> tuple[dict[str, Any], str | None] | None:
        """The Hydra option ``group=name`` as (its config, its package), or None if there is none.

        A component's config is its options' defaults and its name; a task's is in the ``_global_`` package: a
        defaults list choosing its recipe's components, its options under ``task`` and its training regime;
        a pairing's (``recipe/<kind>=<task>_<component>``) is its settings, nested, in ``_global_``.
        """
        if group in KINDS:
            component = self._components.get((group, name))
            if component is None:
                return None
            options = {"name": component.name, **defaults(component.config_class)}
            if component.recipe is None:
                return options, None
            choices = component.recipe.choices()
            overrides = [{f"override /{kind}": chosen} for kind, (chosen, _) in choices.items()]
            return {"defaults": [*overrides, "_self_"], "task": options, "train": dict(component.recipe.train)}, GLOBAL
        pairing = next((p for p in self._pairings.values() if f"{RECIPE}/{p.kind}" == group and p.name == name), None)
        if pairing is None or pairing.unreachable is not None:
            return None
        return nested(pairing.settings), GLOBAL

    def remove_plugin(self, plugin: str) -> None:
        """Forget every component and pairing ``plugin`` registered (and their Hydra options)."""
        for key, component in list(self._components.items()):
            if component.plugin == plugin:
                del self._components[key]
        for pairing in self.pairings():
            if pairing.plugin == plugin:
                self.drop(pairing)


def task_pairings(task: Component) -> list[Pairing]:
    """The pairings a task's recipe names: its own choices' tuned options, its ``pairings`` and ``unreachable``."""
    recipe = task.recipe
    found = [
        Pairing(task.name, kind, chosen, {f"{kind}.{key}": value for key, value in flat(tuned).items()}, task.plugin)
        for kind, (chosen, tuned) in recipe.choices().items()
        if tuned
    ]
    for choice, settings in recipe.pairings.items():
        kind, _, component = choice.partition("=")
        found.append(Pairing(task.name, kind, component, dict(settings), task.plugin))
    for choice, why in recipe.unreachable.items():
        kind, _, component = choice.partition("=")
        found.append(Pairing(task.name, kind, component, {}, task.plugin, unreachable=why))
    return found


def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'init': {'scheme': 'normal'}} -> {'init.scheme': 'normal'}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        out.update(flat(value, dotted + ".") if isinstance(value, Mapping) else {dotted: value})
    return out


def nested(settings: Settings) -> dict[str, Any]:
    """{'optim.lr': 0.1, 'train.steps': 9} -> {'optim': {'lr': 0.1}, 'train': {'steps': 9}}."""
    tree: dict[str, Any] = {}
    for key, value in settings.items():
        *path, last = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def unknown_option(config_class: type, key: str, prefix: str) -> str | None:
    """What is wrong with the dotted ``key`` of the dataclass ``config_class`` (nested ones included), or None."""
    hints = field_types(config_class)
    names = [f.name for f in dataclasses.fields(config_class)]
    head, _, rest = key.partition(".")
    if head not in names:
        return f"{prefix}.{key}: no such option; accepted: {', '.join(f'{prefix}.{n}' for n in names)}"
    if dataclasses.is_dataclass(hints[head]):
        return unknown_option(hints[head], rest, f"{prefix}.{head}") if rest else None
    return f"{prefix}.{key}: no such option; accepted: {prefix}.{head}" if rest else None
