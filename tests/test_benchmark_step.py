"""Smoke test of benchmarks/step.py: the quick run prints a row of numbers for every configuration and the plot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a benchmark's smoke test: minutes of whole runs; CI runs it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step.py"
NUMBER = r"\d+(?:\.\d+)?"
CONFIGS = [
    "adder B=1",
    "adder B=32",
    "charlm B=1",
    "charlm B=32",
    "echo B=5",
    "large rnn",
    "large lstm",
    "large gru",
    "hidden=8",
    "hidden=32",
    "length=5",
    "length=20",
]


def test_quick_run_prints_every_configuration_and_the_plot(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    plot = tmp_path / "s.png"
    command = [sys.executable, str(SCRIPT), "--quick", "--plot", str(plot)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "cores (os.cpu_count())" in out
    assert re.search(rf"matmul peak float32: numpy {NUMBER} GFLOP/s", out), out
    for config in CONFIGS:
        for dtype in ("float32", "float64"):
            # name | cell | I-H-K | T | B | dtype | MFLOP | 3 x steps/s | 2 ratios | matmuls alone (ms) | bound
            # | 3 x GFLOP/s (% peak) | rounds
            pattern = (
                rf"^\| {re.escape(config)} \| (rnn|lstm|gru) \| \d+-\d+-\d+ \| \d+ \| \d+ \| {dtype} \| {NUMBER}"
                rf"((?: \| {NUMBER}){{7}})( \| {NUMBER} \({NUMBER}%\)){{3}} \| \d+ \|$"
            )
            found = re.search(pattern, out, re.MULTILINE)
            assert found, f"no row for {config} {dtype}:\n{out}"
            ours, module, cells, by_module, by_cells, alone_ms, bound = map(float, found[2].split(" | ")[1:])
            assert by_module == pytest.approx(ours / module, abs=0.011)
            assert by_cells == pytest.approx(ours / cells, abs=0.011) and alone_ms > 0
            assert bound == pytest.approx(1e3 / module / alone_ms, rel=0.02, abs=0.011)  # the module's step / floor
    for config in ("charlm B=32", "large rnn"):
        for dtype in ("float32", "float64"):
            overhead = rf"^\| {config} \| {dtype}( \| {NUMBER}){{5}} \| -?{NUMBER}% \| [0-9.e+-]+ \| \d+ \|$"
            assert re.search(overhead, out, re.MULTILINE), f"no engine overhead row for {config} {dtype}:\n{out}"
    for config in CONFIGS[:5]:  # the tutorials: their whole training loop too
        for dtype in ("float32", "float64"):
            # config | dtype | loop us | bare us | loop / bare | module us | module / loop | numba loop us
            # | module / numba loop | rounds (numba is in the test extra)
            loop = rf"^\| {re.escape(config)} \| {dtype}((?: \| {NUMBER}){{7}}) \| \d+ \|$"
            found = re.search(loop, out, re.MULTILINE)
            assert found, f"no whole-loop row for {config} {dtype}:\n{out}"
            loop_us, bare_us, by_bare, module_us, by_loop, numba_us, by_numba = map(float, found[1].split(" | ")[1:])
            assert by_bare == pytest.approx(loop_us / bare_us, abs=0.011)
            assert by_loop == pytest.approx(module_us / loop_us, abs=0.011)
            assert by_numba == pytest.approx(module_us / numba_us, abs=0.011)
    assert plot.is_file() and plot.stat().st_size > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_runs_the_named_configurations_and_refuses_an_unknown_name(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    command = [sys.executable, str(SCRIPT), "--quick", "--dtype", "float64", "--plot", str(tmp_path / "s.png")]
    result = subprocess.run([*command, "--only", "echo"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^\| ([a-z]+[^|]*?) \| (?:rnn|lstm|gru) \|", result.stdout, re.MULTILINE)
    assert rows == ["echo B=5"]
    assert "Engine overhead" not in result.stdout and not (tmp_path / "s.png").exists()
    refused = subprocess.run([*command, "--only", "lstm"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert "--only 'lstm' names no configuration; the configurations: adder B=1, adder B=32" in refused.stderr


def test_the_header_names_the_blas_kernels_and_the_huge_pages_and_whether_the_environment_chose_them(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    command = [sys.executable, str(SCRIPT), "--quick", "--dtype", "float64", "--only", "echo"]
    command += ["--plot", str(tmp_path / "s.png")]
    unset = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "THP_MEM_ALLOC_ENABLE")}
    chosen = {**unset, "OPENBLAS_CORETYPE": "Haswell", "THP_MEM_ALLOC_ENABLE": "0"}
    forced = subprocess.run(command, env=chosen, capture_output=True, text=True)
    own = subprocess.run(command, env=unset, capture_output=True, text=True)
    assert forced.returncode == 0 and own.returncode == 0, forced.stderr + own.stderr
    line = r"^- OpenBLAS kernels: Haswell \(OPENBLAS_CORETYPE=Haswell in the environment; OpenBLAS's own choice "
    found = re.search(
        line + r"for this CPU is (\w+): prefix the command with `env -u OPENBLAS_CORETYPE`", forced.stdout, re.M
    )
    assert found, forced.stdout
    assert re.search(r"^- thread pools: .*openblas [0-9.]+ Haswell ", forced.stdout, re.M), forced.stdout
    choice = found.group(1)
    line = rf"^- OpenBLAS kernels: {choice} \(OpenBLAS's own choice for this CPU; OPENBLAS_CORETYPE is not set\)$"
    assert re.search(line, own.stdout, re.M), own.stdout
    assert re.search(rf"^- thread pools: .*openblas [0-9.]+ {choice} ", own.stdout, re.M), own.stdout
    pages = "- huge pages: numpy madvises its large arrays; PyTorch's CPU allocator THP_MEM_ALLOC_ENABLE="
    assert pages + "0\n" in forced.stdout and pages + "1\n" in own.stdout, forced.stdout + own.stdout
