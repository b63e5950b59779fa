"""The component reference cannot drift from the registry; the plugin page's example is a working plugin."""

from __future__ import annotations

import re
import subprocess
import sys
import types

from conftest import REPO, installed

import framework
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


def test_the_plugin_page_example_is_a_working_plugin(monkeypatch, tmp_path):
    """docs/plugins.md's ``signdescent.py``, as written: its optimizer is an option, its recipe applies on the adder,
    and that run reaches the tutorial's result at the step the page states."""
    page = (REPO / "docs" / "plugins.md").read_text()
    code = re.search(r"```python\n(# signdescent\.py\n.*?)```", page, re.DOTALL).group(1)
    module = types.ModuleType("signdescent")
    monkeypatch.setitem(sys.modules, "signdescent", module)
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    monkeypatch.chdir(tmp_path)
    with installed(module, "signdescent"):
        result = framework.run("adder", optim="signdescent", tracking={"enabled": False})
    assert (result.config["optim"]["lr"], result.config["train"]["batch_size"]) == (0.01, 32)  # its recipe
    stated = re.search(r"reaches the tutorial's result \(every sum right, at step (\d+)", page)
    assert result.verdict.status == "reached" and result.verdict.step == int(stated.group(1))
