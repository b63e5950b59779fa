"""Smoke test of benchmarks/startup.py: one timed start-up of each command, a baseline beside, and a refused run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a benchmark's smoke test: CI runs it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "startup.py"


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the benchmark script with ``args``."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_each_command_is_timed_to_its_first_step_beside_a_baseline(tmp_path: Path) -> None:
    """--baseline runs the same command with another interpreter: here this one."""
    result = bench("--repeat", "1", "--baseline", sys.executable, "--override", "task=counting", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "- command: `python -m framework tracking.enabled=false task=counting`" in result.stdout
    for command in ("this install", "base", "hydra floor"):
        found = re.search(rf"^\| {command} \| (\d+\.\d+) \| (\d+\.\d+) \| (\d+\.\d+) \|$", result.stdout, re.MULTILINE)
        assert found, result.stdout
        median, low, high = map(float, found.groups())
        assert 0 < low == median == high < 60  # one run: a time from spawn to the first step
    assert not list(tmp_path.iterdir())  # its runs live in a folder of its own, removed


def test_a_command_that_never_trains_is_one_line(tmp_path: Path) -> None:
    result = bench("--repeat", "1", "--override", "task=nope", cwd=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        "benchmarks/startup.py: error: this install never reached its first step: framework: error: task='nope': "
        "expected one of: adder, "
    ), line
