"""Benchmark: the default adder run, whole process, against the adder tutorial's own script.

Times, alternately and ``--repeat`` times each (medians, min-max), from process start to exit:

* ``tutorial``: ``python benchmarks/trask_adder.py``, a faithful copy of Trask's script (per-sample numpy,
  10000 iterations, no tracking);
* ``tracked``: ``python -m framework task=adder``, recorded in ./mlruns (a store whose tables exist, as for a
  user who has run before: copied from a template made once);
* ``off``: the same with ``tracking.enabled=false``;

each in a fresh temporary directory, with the same interpreter; with ``--baseline PYTHON`` (the interpreter of an
environment with another version of the project, as for benchmarks/end_to_end.py) also ``base tracked`` and
``base off``, in the same rotation. The figure of issue 24's target is tracked / tutorial (at most 0.66). The
machine is shared: the load average is printed before and after.

    python benchmarks/adder_vs_tutorial.py [--repeat 7] [--baseline PYTHON] [--override KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common import PROG, add_override_option, blas_kernels, require_positive, table
from end_to_end import create_template, spawn

TUTORIAL = Path(__file__).resolve().parent / "trask_adder.py"


def commands(overrides: Sequence[str], baseline: str | None) -> dict[str, list[str]]:
    """The commands, by name: the tutorial, this version tracked and off, and the baseline's."""
    chosen = {"tutorial": [sys.executable, str(TUTORIAL)]}
    for prefix, python in (("", sys.executable), ("base ", baseline)):
        if python is not None:
            run = [python, "-m", "framework", "task=adder", *overrides]
            chosen.update({f"{prefix}tracked": run, f"{prefix}off": [*run, "tracking.enabled=false"]})
    return chosen


def time_once(command: Sequence[str], template: Path) -> float:
    """Wall seconds of ``command`` from spawn to exit, in a fresh folder holding a copy of the template store."""
    with tempfile.TemporaryDirectory(prefix="adder-vs-tutorial-") as folder:
        (Path(folder) / "run" / "mlruns").mkdir(parents=True)
        shutil.copy(template, Path(folder) / "run" / "mlruns" / "mlflow.db")
        report, _ = spawn(command, Path(folder), " ".join(command[1:]), {})
    return report["wall"]


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs of each command (median); default 7")
    parser.add_argument("--baseline", metavar="PYTHON", help="the interpreter of another version of the project")
    add_override_option(parser, "framework run")
    args = parser.parse_args(argv)
    require_positive(parser, args, ("repeat",))
    load_before = os.getloadavg()
    chosen = commands(args.override, args.baseline)
    walls: dict[str, list[float]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory(prefix="adder-vs-tutorial-store-") as folder:
        template = create_template(Path(folder))
        for k in range(args.repeat):  # alternately, the order rotated, so that load drifts hit every command
            names = list(chosen)[k % len(chosen) :] + list(chosen)[: k % len(chosen)]
            for name in names:
                walls[name].append(time_once(chosen[name], template))
                print(f"[{k + 1}/{args.repeat}] {name}: {walls[name][-1]:.2f} s", file=sys.stderr)
    tutorial = statistics.median(walls["tutorial"])
    rows = [[name, spread(values), f"{statistics.median(values) / tutorial:.2f}"] for name, values in walls.items()]
    load = " / ".join(" ".join(f"{x:.2f}" for x in loads) for loads in (load_before, os.getloadavg()))
    print(
        "\n".join(
            [
                f"# The default adder run against the tutorial's script: {args.repeat} runs each, alternately",
                "",
                f"- date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
                f"- machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                f"- load average (1, 5, 15 min) before / after: {load}",
                f"- OpenBLAS kernels: {blas_kernels()}",
                f"- command: `python {' '.join([PROG, *(sys.argv[1:] if argv is None else argv)])}`",
                "",
                table(["command", "wall, median (min-max) (s)", "/ tutorial"], rows),
            ]
        )
    )


if __name__ == "__main__":
    main()
