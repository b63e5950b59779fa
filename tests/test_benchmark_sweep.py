"""Smoke test of benchmarks/sweep.py: a tiny sweep with both launchers, and a failing sweep."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

pytestmark = pytest.mark.slow  # a benchmark's smoke test: minutes of whole runs; CI runs it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sweep.py"
NUMBER = r"-?\d+\.\d+"


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the benchmark script with ``args``."""
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=600)


def test_both_launchers_are_timed(tmp_path: Path) -> None:
    result = bench("--jobs", "2", "--steps", "5", "--repeat", "1", "--import-repeat", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "cores (os.cpu_count())" in out
    assert "template store" in out
    for launcher in ("basic", "joblib"):
        wall = rf"^\| {launcher} \| on \| 2 \| \d+ \| ({NUMBER}) \| ({NUMBER}) \| ({NUMBER})× \|$"
        assert re.search(wall, out, re.MULTILINE), out
        inside = rf"^\| {launcher} \| on \| {NUMBER} \| {NUMBER} \(-?\d+%\) \|.* \| 2/2 \|$"
        assert re.search(inside, out, re.MULTILINE), out
        shares = rf"^\| {launcher} \| on \| {NUMBER}( \| {NUMBER} \(-?\d+%\)){{5}} \|$"
        assert re.search(shares, out, re.MULTILINE), out


def test_a_failing_sweep_exits_with_one_line(tmp_path: Path) -> None:
    result = bench("--jobs", "1", "--task", "no_such_task", "--repeat", "1", "--import-repeat", "1", cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("benchmarks/sweep.py: error: the basic sweep"), result.stderr


def test_an_override_is_passed_to_the_jobs(tmp_path: Path) -> None:
    result = bench("--jobs", "1", "--repeat", "1", "--import-repeat", "1", "--override", "train.stepz=5", cwd=tmp_path)
    assert result.returncode != 0
    assert ": framework: error: train.stepz: no such option; accepted: " in result.stderr, result.stderr
