"""Smoke test of benchmarks/end_to_end.py: the quick benchmark (counting, tracking on and off), and a failing run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a benchmark's smoke test: minutes of whole runs; CI runs it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "end_to_end.py"
NUMBER = r"-?\d+\.\d+"


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the benchmark script with ``args``."""
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_quick_benchmark_times_counting_tracked_and_untracked(tmp_path: Path) -> None:
    result = bench("--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "cores" in out and "load average" in out and "baseline: none" in out
    # per run: wall tracked and off, their ratio, the engine's run tracked and off, peak RSS tracked and off
    for run in ("counting", "counting, 200 steps"):
        row = rf"^\| {run}( \| {NUMBER}){{5}} \| (\d+) \| (\d+) \|$"
        found = re.search(row, out, re.MULTILINE)
        assert found, out
        assert int(found.group(2)) > 20 and int(found.group(3)) > 20, out  # a run's memory, not the launcher's


def test_a_baseline_is_measured_beside(tmp_path: Path) -> None:
    """--baseline runs the same commands with another interpreter: here this one, so both columns appear."""
    result = bench("--quick", "--long-steps", "20", "--baseline", sys.executable, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("| run |"))
    assert "wall, base tracked (s)" in header and "wall, base off (s)" in header and "tracked / base tracked" in header
    assert re.search(rf"^\| counting( \| {NUMBER}){{8}} \| \d+ \| \d+ \|$", result.stdout, re.MULTILINE)

    result = bench("--quick", "--baseline", str(tmp_path / "no-python"), cwd=tmp_path)
    assert result.returncode == 2
    assert f"--baseline {tmp_path / 'no-python'}: cannot run it (No such file or directory)" in result.stderr


def test_a_failing_run_exits_with_one_line(tmp_path: Path) -> None:
    result = bench("--tasks", "no_such_task", "--repeat", "1", cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("benchmarks/end_to_end.py: error: `python -m framework task=no_such_task`"), lines[0]


def test_an_override_is_passed_to_the_runs(tmp_path: Path) -> None:
    result = bench("--quick", "--override", "train.stepz=5", cwd=tmp_path)
    assert result.returncode != 0
    assert ": framework: error: train.stepz: no such option; accepted: " in result.stderr, result.stderr
