"""A plugin-based experiment framework for the classic recurrent-network tutorials.

The Python API (:mod:`framework.cli.api`): ``framework.run``, ``framework.sweep``; loaded when first used, so
that importing a part of the framework (a plugin importing ``framework.core.hookspecs``) stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["FrameworkError", "Result", "SweepResult", "run", "sweep"]


def __getattr__(name: str) -> Any:
    if name == "FrameworkError":
        from framework.core.errors import FrameworkError

        return FrameworkError
    if name in __all__:
        from framework.cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'framework' has no attribute {name!r}")
