"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``).

- The tutorial notebooks live in ``notebooks/`` at the repository's root (where ``pytest --nbmake notebooks/``
  executes them); :func:`on_files` adds them to the site as ``notebooks/<name>.ipynb``, which mkdocs-jupyter
  renders with their stored outputs.
- A page may hold a marker that is replaced by a table generated from the installed framework, so that the
  pages cannot drift from the code (as ``docs/components.md``, written by ``python -m framework docs``):

  ``<!-- generated: settings -->``
      every run-wide setting (``seed``, ``train.*``, ``tracking.*``, ...) with its default and meaning;
  ``<!-- generated: groups -->``
      every option of every group (task, dataset, cell, loss, optim) and the plugin that provides it;
  ``<!-- generated: recipes TASK -->``
      the task's reference recipe and the tuned recipe of every other optimizer and cell on it.
- The docstrings' Sphinx roles (``:func:`~x.y` ``), which mkdocstrings leaves as they are, become code.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
MARKER = re.compile(r"<!-- generated: (\w+)(?: (\w+))? -->")
SPHINX_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc):<code>(~?)([\w.]+)</code>")


@event_priority(50)  # before mkdocs-jupyter's on_files, which makes the notebooks pages
def on_files(files: Files, config: Any) -> Files:
    """Add every notebook of ``notebooks/`` to the site, under ``notebooks/``."""
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        files.append(File(f"notebooks/{notebook.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


@cache
def registry() -> Any:
    from framework.cli import host

    return host.manager().registry


def settings_table() -> str:
    from framework.cli.docs import options
    from framework.core.settings import Settings

    rows = ["| key | default | accepted | meaning |", "| --- | --- | --- | --- |"]
    rows += [
        f"| `{key}` | `{default}` | {accepted} | {meaning} |" for key, default, accepted, meaning in options(Settings)
    ]
    return "\n".join(rows)


def groups_table() -> str:
    from framework.core.registry import KINDS

    rows = ["| group | options (plugin) |", "| --- | --- |"]
    for kind in KINDS:
        names = ", ".join(f"`{c.name}` ({c.plugin})" for c in registry().of_kind(kind))
        rows.append(f"| `{kind}` | {names} |")
    return "\n".join(rows)


def recipes_table(task_name: str) -> str:
    from framework.cli.docs import recipe_text
    from framework.core.registry import PAIRED_KINDS

    task = registry().get("task", task_name)
    lines = [f"Reference recipe (`python -m framework task={task_name}`): {recipe_text(task)}", ""]
    pairings = [p for p in registry().pairings() if p.task == task_name and p.kind in PAIRED_KINDS]
    reference = {kind: name for kind, (name, _) in task.recipe.choices().items()}
    pairings = [p for p in pairings if reference.get(p.kind) != p.component]
    if pairings:
        lines += ["| change | its tuned recipe (applied by the change alone) |", "| --- | --- |"]
        for p in pairings:
            if p.unreachable:
                recipe = f"cannot reach the result: {p.unreachable}"
            else:
                recipe = " ".join(f"`{k}={v}`" for k, v in p.settings.items()) or "none needed"
            lines.append(f"| `task={task_name} {p.choice}` | {recipe} |")
    return "\n".join(lines)


def generated(match: re.Match) -> str:
    what, argument = match.group(1), match.group(2)
    if what == "settings":
        return settings_table()
    if what == "groups":
        return groups_table()
    if what == "recipes" and argument:
        return recipes_table(argument)
    raise ValueError(f"unknown generated block: {match.group(0)}")


def role_as_code(match: re.Match) -> str:
    name = match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if match.group(1) else name}</code>"


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Render the Sphinx roles of the docstrings, which mkdocstrings shows as they are (``:func:`~a.b` ``), as the
    code they name (``~``: its last name only)."""
    return SPHINX_ROLE.sub(role_as_code, html)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace each ``<!-- generated: ... -->`` marker of a page with its table."""
    return MARKER.sub(generated, markdown)
