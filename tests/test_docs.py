"""The component reference cannot drift from the registry."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

from framework.cli.docs import equations, options, own_plugins, reference
from framework.core import plugins

REGISTRY = plugins.manager().registry


def test_every_registered_component_is_documented():
    """Also a third-party one: its factory states its equations and every option says what it means."""
    for component in REGISTRY.all():
        where = f"{component.kind} {component.name!r} of plugin {component.plugin!r}"
        assert equations(component), f"{where}: the factory has no docstring"
        assert (component.config_class.__doc__ or "").strip(), f"{where}: the config class has no docstring"
        for key, _, _, meaning in options(component.config_class):
            assert meaning, f"{where}: option {key} has no doc"


def test_the_committed_reference_is_the_generated_one():
    committed = (REPO / "docs" / "components.md").read_text()
    assert committed == reference(REGISTRY, own_plugins()), "run: python -m framework docs > docs/components.md"


def test_docs_command_prints_the_reference():
    result = subprocess.run([sys.executable, "-m", "framework", "docs"], capture_output=True, text=True, check=True)
    assert result.stdout == (REPO / "docs" / "components.md").read_text()
