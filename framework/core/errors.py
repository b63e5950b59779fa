"""Every error a user meets, and its one-line rendering: the bottom of the house, importable from every layer.

A :class:`FrameworkError` is something the user must act on: ``str(error)`` is one line naming the bad
value and what is accepted, and :attr:`FrameworkError.exit_code` is the command line's exit code (2 for
a mistake in the config or on the command line, 1 for a run that failed). The Python API raises them as
they are; the command line prints ``framework: error: <str(error)>`` and exits with the code.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn


class FrameworkError(Exception):
    """A user's mistake or a failed run; ``str()`` is one line."""

    exit_code = 1


class ConfigError(FrameworkError, ValueError):
    """A configuration value a user gave is not acceptable.

    ``str(error)`` is the whole one-line message: key, value, what is accepted.
    """

    exit_code = 2

    def __init__(self, key: str, value: Any, accepted: str) -> None:
        self.key, self.value, self.accepted = key, value, accepted
        super().__init__(self.message())

    def message(self) -> str:
        """The one line: ``key=value: expected <what is accepted>``."""
        return f"{self.key}={self.value!r}: expected {self.accepted}"

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key placed under ``prefix`` (``lr`` -> ``optim.lr``)."""
        return type(self)(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.accepted)


class UnknownKeyError(ConfigError):
    """A key that is not an option; ``accepted`` lists the keys that are."""

    def message(self) -> str:
        """The one line: ``key: no such option; accepted: <keys>``."""
        return f"{self.key}: no such option; accepted: {self.accepted}"


class CommandLineError(FrameworkError, ValueError):
    """The command line cannot be composed into a config."""

    exit_code = 2


class PluginError(FrameworkError):
    """A plugin is broken or conflicts with another."""

    exit_code = 2


class PluginConflictError(PluginError):
    """Two plugins register a component of the same kind and name: always fatal."""


class IncompatibleError(FrameworkError, ValueError):
    """The chosen components do not fit together (e.g. a loss for class indices on counts)."""

    exit_code = 2


class CheckpointError(FrameworkError, ValueError):
    """A checkpoint is missing, damaged, or belongs to another run."""

    exit_code = 2


class DivergenceError(FrameworkError, ArithmeticError):
    """The loss or the gradient became NaN or infinite."""

    def __init__(self, step: int, loss: float, norm: float) -> None:
        super().__init__(
            f"training diverged at step {step}: loss={loss:.6g}, gradient norm={norm:.6g}; "
            "try gradient clipping (train.clip_norm=1.0) or a smaller learning rate or step size"
        )


class TrackingError(FrameworkError, RuntimeError):
    """The tracking store cannot be used, or recording failed; the line names the store."""


class ExitCalledError(RuntimeError):
    """``sys.exit()`` was called by code a run called (a plugin's): a failure of the run, not a quiet end of the
    program; its ``__cause__`` is the SystemExit, whose traceback says where."""


def one_line(error: BaseException) -> str:
    """The first line of an exception's message."""
    return (str(error).splitlines() or [""])[0]


def described(error: BaseException) -> str:
    """An exception in one line: ``<type>: <the first line of its message>``."""
    return f"{type(error).__name__}: {one_line(error)}"


def print_error(message: object) -> None:
    """Print ``framework: error: <message>`` on standard error: the one line of every failure a user sees."""
    print(f"framework: error: {message}", file=sys.stderr)


def fail(message: object, code: int) -> NoReturn:
    """Print ``framework: error: <message>`` (one line) and exit with ``code``."""
    print_error(message)
    raise SystemExit(code)
