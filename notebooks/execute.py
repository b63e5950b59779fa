"""Execute the tutorial notebooks and store their outputs, as the documentation site shows them.

    python notebooks/execute.py                  # every notebook of this folder
    python notebooks/execute.py adder charlm     # only these

Each runs in a fresh temporary working directory (its runs are recorded in that directory's ./mlruns, which is
deleted afterwards), so the stored outputs name no folder of yours. Prints the seconds each took. CI executes them
without storing anything: ``pytest --nbmake notebooks/``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
TIMEOUT = 600  # seconds a cell may take


def execute(path: Path) -> float:
    """Execute the notebook at ``path`` in a temporary directory and write it back with its outputs; seconds taken."""
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="rnn-tutorials-") as folder:
        started = time.perf_counter()
        NotebookClient(
            notebook, timeout=TIMEOUT, kernel_name="python3", resources={"metadata": {"path": folder}}
        ).execute()
        seconds = time.perf_counter() - started
    nbformat.write(notebook, path)
    return seconds


def main(names: list[str]) -> int:
    paths = [HERE / f"{name}.ipynb" for name in names] if names else sorted(HERE.glob("*.ipynb"))
    total = 0.0
    for path in paths:
        seconds = execute(path)
        total += seconds
        print(f"{path.name:28} {seconds:6.1f} s", flush=True)
    print(f"{'total':28} {total:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
