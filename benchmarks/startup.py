"""Benchmark: process start to the first training step of ``python -m framework``, against Hydra's own floor.

Each measured command is a fresh interpreter running ``python -m framework <overrides>`` (default: the adder,
untracked) in a temporary folder; the first step is the moment the engine's training loop is entered
(``framework.core.engine.train``, stamped by a wrapper installed when the engine module is first imported, so the
command imports and starts up as it always does). Beside it, alternately:

* ``hydra floor``: an app of one config key, importing numpy and Hydra, stamped in its task function: what any
  Hydra command with numpy pays (Hydra composes its config twice, sets up logging, writes the job's folder);
* ``base``, with ``--baseline PYTHON``: the same command with another installed version of the project.

    python benchmarks/startup.py [--repeat 20] [--baseline PYTHON] [--override KEY=VALUE ...]

Medians, minimum and maximum in seconds; the machine's load changes them, so only a table's own columns compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import PROG, add_override_option, clean_env, fail, gist, require_positive, table

DEFAULTS = {"task": "adder", "tracking.enabled": "false"}
STAMP_FD = "STARTUP_BENCH_FD"  # the pipe a measured process writes its first-step time to
# A finder that wraps framework.core.engine.train once the module is imported, then ``python -m framework``.
FRAMEWORK = f"""
import importlib.abc, importlib.machinery, os, runpy, sys, time

class StampFirstStep(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "framework.core.engine":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        execute = spec.loader.exec_module
        def exec_module(module):
            execute(module)
            train = module.train
            def stamped(*args, **kwargs):
                os.write(int(os.environ["{STAMP_FD}"]), repr(time.time()).encode())
                return train(*args, **kwargs)
            module.train = stamped
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, StampFirstStep())
runpy.run_module("framework", run_name="__main__", alter_sys=True)
"""
FLOOR = f"""
import os, time
import numpy
import hydra

@hydra.main(config_path=os.getcwd(), config_name="floor", version_base="1.3")
def app(cfg):
    os.write(int(os.environ["{STAMP_FD}"]), repr(time.time()).encode())

app()
"""


def first_step(name: str, command: list[str], cwd: Path) -> float:
    """Seconds from spawning ``command`` (called ``name`` in a failure's line) to the time it writes to the stamp
    pipe."""
    read, write = os.pipe()
    started = time.time()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        pass_fds=(write,),
        env=clean_env() | {STAMP_FD: str(write)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        stamp = pipe.read()
    _, errors = process.communicate()
    if not stamp:
        fail(f"{name} never reached its first step: {gist(errors)}")
    return float(stamp) - started


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs of each command (median); default 20")
    parser.add_argument(
        "--baseline", metavar="PYTHON", help="the interpreter of an environment with another version of the project"
    )
    add_override_option(parser, "run, besides task=adder tracking.enabled=false unless it sets them")
    args = parser.parse_args(argv)
    require_positive(parser, args, ("repeat",))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Time every command ``--repeat`` times, alternately, and print the table."""
    args = parse_args(argv)
    given = {override.partition("=")[0].lstrip("+~") for override in args.override}
    overrides = [f"{key}={value}" for key, value in DEFAULTS.items() if key not in given] + args.override
    shown = f"`python -m framework {' '.join(overrides)}`"
    commands = {"this install": [sys.executable, "-c", FRAMEWORK, *overrides]}
    if args.baseline:
        commands["base"] = [args.baseline, "-c", FRAMEWORK, *overrides]
    commands["hydra floor"] = [sys.executable, "-c", FLOOR]
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as folder:
        (Path(folder) / "floor.yaml").write_text("a: 1\n")
        for name, command in commands.items():  # once unmeasured: bytecode written, files in the page cache
            first_step(name, command, Path(folder))
        for _ in range(args.repeat):  # alternately, so that a change in the machine's load hits every command
            for name, command in commands.items():
                times[name].append(first_step(name, command, Path(folder)))
    load = " / ".join(" ".join(f"{x:.2f}" for x in loads) for loads in (load_before, os.getloadavg()))
    rows = [[name, f"{statistics.median(t):.3f}", f"{min(t):.3f}", f"{max(t):.3f}"] for name, t in times.items()]
    print(
        "\n".join(
            [
                f"# Start-up benchmark: process start to the first training step, {args.repeat} runs each, alternately",
                "",
                f"- date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
                f"- machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                f"- load average (1, 5, 15 min) before / after: {load}",
                f"- command: {shown}; baseline: {args.baseline or 'none'}",
                "",
                table(["command", "median (s)", "min (s)", "max (s)"], rows),
            ]
        )
    )


if __name__ == "__main__":
    main()
