"""Smoke test of benchmarks/end_to_end.py: the quick benchmark (counting, tracking on and off), and a failing run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "end_to_end.py"
NUMBER = r"-?\d+\.\d+"
SHARE = rf"{NUMBER} \(-?\d+%\)"


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the benchmark script with ``args``."""
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_quick_benchmark_times_counting_tracked_warm_and_cold_and_untracked(tmp_path: Path) -> None:
    result = bench("--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "cores (os.cpu_count())" in out
    assert "load average" in out
    assert "template store" in out
    assert re.search(r"the warm recorder server's own peak RSS: \d+ MiB", out), out  # it ran, and was stopped
    # per task: steps, wall warm/cold/off, two overheads, loop, engine run, three startups, peak RSS warm/off
    per_task = rf"^\| counting \| 20( \| {NUMBER}){{3}}( \| {SHARE}){{2}}( \| {NUMBER}){{5}} \| (\d+) \| (\d+) \|$"
    found = re.search(per_task, out, re.MULTILINE)
    assert found, out
    assert int(found.group(4)) > 20 and int(found.group(5)) > 20, out  # a run's memory, not the launcher's floor
    # where the time goes: A, B, B1, B2, B3, the model, C and when the worker created the run; untracked: A, B, C
    for mode in ("warm", "cold"):
        assert re.search(rf"^\| counting \| {mode} \| {NUMBER}( \| {SHARE}){{8}} \|$", out, re.MULTILINE), out
    untracked = rf"^\| counting \| off \| {NUMBER} \| {SHARE} \| {SHARE}( \| –){{4}} \| {SHARE} \| – \|$"
    assert re.search(untracked, out, re.MULTILINE), out
    # the long run, shortened
    assert "task=counting train.steps=200" in out
    for mode in ("warm", "cold"):
        long_run = (
            rf"^\| {mode} \| 200 \| (\d+)( \| {NUMBER}){{3}} \| \d+ \| {SHARE} \| {NUMBER} \(-?\d+ µs/value\) \|$"
        )
        found = re.search(long_run, out, re.MULTILINE)
        assert found, out
        assert int(found.group(1)) >= 4 * 200  # loss, grad_norm and two weights per step, then the final metrics
    long_off = rf"^\| off \| – \| – \| {NUMBER} \| {NUMBER} \| – \| \d+ \| – \| – \|$"
    assert re.search(long_off, out, re.MULTILINE), out


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
