"""What the benchmark scripts share: a clean environment, one-line failures, markdown tables."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

PROG = f"benchmarks/{Path(sys.argv[0]).name}"  # the script being run, for its messages


CORETYPE = "OPENBLAS_CORETYPE"
# the kernels OpenBLAS runs in a fresh interpreter, printed by threadpoolctl
KERNELS_PROBE = (
    "import numpy, threadpoolctl; pools = threadpoolctl.threadpool_info(); "
    "print(' '.join(p.get('architecture', '?') for p in pools if p['internal_api'] == 'openblas'))"
)


def blas_kernels() -> str:
    """Which OpenBLAS kernels numpy runs here: OpenBLAS's own choice for this CPU, or the one the environment forces.

    OpenBLAS picks its kernels from the CPU when it loads, unless OPENBLAS_CORETYPE names
    them. On this machine the environment sets OPENBLAS_CORETYPE=Haswell (AVX2), where
    OpenBLAS itself would choose SkylakeX (AVX-512) and reach twice the float32 GEMM speed,
    so every figure of numpy's depends on it.
    """
    env = {k: v for k, v in os.environ.items() if k != CORETYPE}
    probe = subprocess.run([sys.executable, "-c", KERNELS_PROBE], env=env, capture_output=True, text=True)
    own = probe.stdout.strip() or "unknown"
    if CORETYPE not in os.environ:
        return f"{own} (OpenBLAS's own choice for this CPU; {CORETYPE} is not set)"
    return (
        f"{os.environ[CORETYPE]} ({CORETYPE}={os.environ[CORETYPE]} in the environment; OpenBLAS's own choice "
        f"for this CPU is {own}: prefix the command with `env -u {CORETYPE}` to measure that)"
    )


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


def add_override_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--override KEY=VALUE`` (repeatable, into ``args.override``): a Hydra override for every ``what``."""
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"an override for every {what}, e.g. tracking.figures=false (repeatable)",
    )
