"""What the benchmark scripts share: a clean environment, one-line failures, markdown tables."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

PROG = f"benchmarks/{Path(sys.argv[0]).name}"  # the script being run, for its messages


def fail(message: str) -> NoReturn:
    """Exit non-zero with one line on standard error."""
    raise SystemExit(f"{PROG}: error: {message}")


def gist(text: str) -> str:
    """The line of a program's error output that says what went wrong."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    errors = [line for line in lines if "error:" in line.lower()]
    if errors:
        return errors[-1]
    if lines and lines[0].startswith("Traceback"):
        return lines[-1]
    return lines[0] if lines else "(no output)"


def clean_env() -> dict[str, str]:
    """This environment without MLFLOW_*, FRAMEWORK_* and HYDRA_* variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FRAMEWORK_", "HYDRA_"))}


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str]) -> None:
    """Stop with the parser's usage error when one of the integer options ``names`` is given below 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
