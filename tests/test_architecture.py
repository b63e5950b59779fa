"""The house shows its layers: cli -> tracking -> core's engine -> nn and plugins -> core's foundations, never back.

Every import of the project's own modules counts, those inside functions too (read from the source with ast).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = ("framework", "plugins")
# what each layer may import from the project's own code (besides itself and the package framework's face); a
# module belongs to the most specific layer that names it: the engine sits above nn, the core's foundations below
ALLOWED = {
    "framework.core": ("framework.core",),
    "framework.core.engine": ("framework.core", "framework.nn"),
    "framework.nn": ("framework.core", "framework.nn"),
    "plugins": ("framework.core", "framework.nn", "plugins"),
    "framework.tracking": ("framework.core", "framework.nn", "framework.tracking"),
    "framework.cli": ("framework.core", "framework.nn", "framework.tracking", "framework.cli"),
}


def modules() -> dict[str, Path]:
    """Every module of the project: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules that module ``name`` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the modules it imports; a package's face importing its own modules is no edge of design."""
    known = modules()
    return {
        name: {t for t in imported(name, path, known) if not (known[t].name == "__init__.py" and name.startswith(t))}
        for name, path in known.items()
    }


def cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    """An import cycle through ``start``, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for target in edges[node]:
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_there_is_no_import_cycle():
    """An import cycle among the project's modules (imports inside functions included) -> none."""
    edges = graph()
    assert len(edges) > 40
    cycles = {name: found for name in edges if (found := cycle_from(name, edges))}
    assert cycles == {}


def test_the_cycle_finder_finds_one():
    """The check above is not vacuous: a cycle of three is found."""
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": set()}) is None


def layer_of(module: str) -> str | None:
    """The most specific layer of :data:`ALLOWED` that ``module`` belongs to."""
    layers = [layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")]
    return max(layers, key=len) if layers else None


@pytest.mark.parametrize("layer", ALLOWED)
def test_each_layer_imports_only_those_below_it(layer):
    """The core's foundations import nothing above them (only the engine uses nn); nothing in the core imports
    tracking or the command line; nn and the tutorial plugins only the core (and nn); tracking nothing from the
    command line."""
    edges = graph()
    below = ALLOWED[layer]
    wrong = {
        name: sorted(t for t in targets if t != "framework" and not t.startswith(below))
        for name, targets in edges.items()
        if layer_of(name) == layer
    }
    assert {name: targets for name, targets in wrong.items() if targets} == {}
