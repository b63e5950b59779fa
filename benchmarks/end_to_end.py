"""Benchmark: each task's default run end to end, from process start to exit, tracked and untracked.

For each tutorial task (counting, adder, echo, charlm, seq2seq by default) it runs
``python -m framework task=<task>`` in a fresh temporary directory as its cwd, ``--repeat`` times in
each mode, the modes interleaved (medians reported):

* ``tracked``: recorded in ./mlruns (the recording process starts with the command and ends with it);
* ``off``: ``tracking.enabled=false``;

and, with ``--baseline PYTHON`` (the interpreter of another environment with another version of the
project installed, e.g. ``git worktree add /tmp/base <commit> && python -m venv /tmp/base-env &&
/tmp/base-env/bin/pip install -e /tmp/base``), the same commands run with it in the same session, so
that before and after are measured side by side: ``base tracked`` and ``base off``; for a version from
before the recording process (137b84e and earlier, which kept a recorder server between runs)
``base cold`` (its first run) and ``base warm`` (with its server already running, as every run after a
user's first was then).

Per run it measures the wall time (``time.perf_counter`` around ``os.posix_spawn`` and ``os.wait4`` in a
small launcher process) and the peak memory (``ru_maxrss`` of ``os.wait4``; the launcher is a bare
interpreter, so its own peak does not hide the run's); and the engine's run, from its "<task> finished in
X s" log line. The store: the MLflow tables are created once in a template database, copied into each
run's ./mlruns/mlflow.db, like a user who has run before.

Second, a long run that logs many metrics: ``python -m framework task=counting train.steps=10000``.

    python benchmarks/end_to_end.py [--tasks counting adder ...] [--repeat 3] [--steps N] [--baseline PYTHON]
                                    [--long-steps 10000] [--override KEY=VALUE ...] [--quick]

``--quick`` (the smoke test's): counting only with ``train.steps=20``, one repetition, a 200-step long run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import PROG, add_override_option, blas_kernels, clean_env, fail, gist, require_positive, table

TIMEOUT = 3600.0  # seconds, for any one run
TASKS = ("counting", "adder", "echo", "charlm", "seq2seq")
FINISHED = re.compile(r"\[framework\.(?:core\.)?engine\]\[INFO\] - .+? finished in ([0-9.]+) s")
# a checkout from before the recording process kept a recorder server between runs, set up by these variables
OLD_SERVER_FOLDER, OLD_SERVER_IDLE = "FRAMEWORK_RECORDER_DIR", "FRAMEWORK_RECORDER_IDLE"

# Runs a command as its child and reports the child's wall time, exit code and own peak memory
# (python -S: no site imports, a small process; see spawn).
LAUNCHER = """
import json, os, sys, time

report, command = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.posix_spawn(command[0], command, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as file:
    json.dump({"wall": wall, "peak_kib": usage.ru_maxrss, "code": code}, file)
"""


@dataclass
class Mode:
    """How a run is made: with which interpreter (and so which version of the project), tracked or not, with which
    environment."""

    name: str
    python: str
    tracked: bool
    env: dict[str, str]


@dataclass
class Measure:
    """One run: its wall time and peak memory, and the engine's run ("finished in"), in seconds and MiB."""

    wall: float
    peak_mib: float
    engine: float


def spawn(command: Sequence[str], folder: Path, what: str, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Run ``command`` in ``folder/run`` through :data:`LAUNCHER`; its report and output. Fails on an error.

    The launcher, not this process, starts the child: a child's ``ru_maxrss`` never falls below the peak RSS
    of the process that spawned it (Linux records the spawner's high-water mark at ``exec``).
    """
    output_path, report_path = folder / "output.txt", folder / "usage.json"
    launcher = [sys.executable, "-S", "-c", LAUNCHER, str(report_path), *command]
    with open(output_path, "w") as output_file:
        process = subprocess.Popen(
            launcher,
            cwd=folder / "run",
            env={**clean_env(), **env},
            stdout=output_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that a timeout ends the run too
        )
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            fail(f"{what} took over {TIMEOUT:.0f} s")
    output = output_path.read_text(errors="replace")
    if process.returncode != 0 or not report_path.exists():
        fail(f"{what}: the launcher failed (exit {process.returncode}): {gist(output)}")
    report = json.loads(report_path.read_text())
    if report["code"] != 0:
        fail(f"{what} failed (exit {report['code']}): {gist(output)}")
    return report, output


def create_template(folder: Path) -> Path:
    """An MLflow store with its tables created: ``folder/mlflow.db``."""
    from mlflow import MlflowClient

    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def run_once(task: str, overrides: Sequence[str], mode: Mode, template: Path) -> Measure:
    """One timed ``python -m framework task=<task> ...`` in a fresh temporary directory, in ``mode``."""
    what = f"`python -m framework task={task}` ({mode.name})"
    command = [mode.python, "-m", "framework", f"task={task}", *overrides]
    if not mode.tracked:
        command.append("tracking.enabled=false")
    env = dict(mode.env)
    with tempfile.TemporaryDirectory(prefix="end-to-end-bench-") as folder:
        cwd = Path(folder) / "run"
        (cwd / "mlruns").mkdir(parents=True)
        shutil.copy(template, cwd / "mlruns" / "mlflow.db")
        if OLD_SERVER_FOLDER in env and not env[OLD_SERVER_FOLDER]:  # cold: a server of its own, none running
            env.update({OLD_SERVER_FOLDER: str(Path(folder) / "recorder"), OLD_SERVER_IDLE: "0"})
        report, output = spawn(command, Path(folder), what, env)
    finished = FINISHED.search(output)
    if finished is None:
        fail(f"{what}: no 'finished in' line in its output")
    return Measure(report["wall"], report["peak_kib"] / 1024, float(finished.group(1)))


def modes(baseline: str | None, servers: Path) -> list[Mode]:
    """This version tracked and off; with a baseline, the same with it (cold and warm, for an old one)."""
    chosen = [Mode("tracked", sys.executable, True, {}), Mode("off", sys.executable, False, {})]
    if baseline is None:
        return chosen
    chosen += [Mode("base tracked", baseline, True, {}), Mode("base off", baseline, False, {})]
    old = subprocess.run([baseline, "-c", "import framework.recorder_server"], capture_output=True, env=clean_env())
    if old.returncode == 0:
        chosen[2].name, chosen[2].env = "base cold", {OLD_SERVER_FOLDER: ""}
        chosen.append(Mode("base warm", baseline, True, {OLD_SERVER_FOLDER: str(servers), OLD_SERVER_IDLE: "3600"}))
    return chosen


def median(measures: Sequence[Measure], value: str) -> float:
    return statistics.median(getattr(m, value) for m in measures)


def walls(measures: Sequence[Measure]) -> str:
    """The median wall time, with the min–max of several repetitions."""
    values = [m.wall for m in measures]
    spread = f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""
    return f"{statistics.median(values):.2f}{spread}"


def report_table(results: dict[tuple[str, str], list[Measure]], rows: Sequence[str], chosen: Sequence[Mode]) -> str:
    """Per run: the wall time of each mode, tracked / off, each baseline against this checkout, peak memory."""
    names = [mode.name for mode in chosen]
    bases = [name for name in names if name.startswith("base") and name != "base off"]
    lines = []
    for row in rows:
        wall = {name: median(results[(row, name)], "wall") for name in names}
        cells = [row, *(walls(results[(row, name)]) for name in names)]
        cells.append(f"{wall['tracked'] / wall['off']:.2f}")
        cells += [f"{wall['tracked'] / wall[name]:.2f}" for name in bases]
        cells += [f"{median(results[(row, name)], 'engine'):.2f}" for name in ("tracked", "off")]
        cells += [f"{median(results[(row, name)], 'peak_mib'):.0f}" for name in ("tracked", "off")]
        lines.append(cells)
    header = ["run", *(f"wall, {name} (s)" for name in names), "tracked / off"]
    header += [f"tracked / {name}" for name in bases]
    header += ["engine run, tracked (s)", "engine run, off (s)", "peak RSS tracked (MiB)", "peak RSS off (MiB)"]
    return table(header, lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", default=None, help=f"the tasks to run (default: {' '.join(TASKS)}); commas also work"
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs per task and mode (median); default 3")
    parser.add_argument("--steps", type=int, default=None, help="train.steps of the task runs; default: each task's")
    parser.add_argument(
        "--baseline", metavar="PYTHON", help="the interpreter of an environment with another version of the project"
    )
    add_override_option(parser, "run")
    parser.add_argument("--long-steps", type=int, default=None, help="train.steps of the long counting run; 10000")
    parser.add_argument(
        "--quick", action="store_true", help="counting with train.steps=20, one repetition, a 200-step long run"
    )
    args = parser.parse_args(argv)
    tasks = [name for word in (args.tasks or []) for name in word.split(",") if name]
    args.tasks = tasks or (["counting"] if args.quick else list(TASKS))
    if len(set(args.tasks)) != len(args.tasks):
        parser.error("--tasks names a task twice")
    if args.baseline is not None:
        try:
            probe = subprocess.run([args.baseline, "-c", "import framework"], capture_output=True, env=clean_env())
        except OSError as error:
            parser.error(f"--baseline {args.baseline}: cannot run it ({error.strerror})")
        if probe.returncode != 0:
            parser.error(f"--baseline {args.baseline}: cannot import the project with it")
    defaults = {"steps": 20, "repeat": 1, "long_steps": 200} if args.quick else {"repeat": 3, "long_steps": 10000}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    require_positive(parser, args, ("repeat", "steps", "long_steps"))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run every task and the long run in every mode, and print the report."""
    args = parse_args(argv)
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()
    overrides = [*([f"train.steps={args.steps}"] if args.steps is not None else []), *args.override]
    long_name = f"counting, {args.long_steps} steps"
    runs = {task: [f"task={task}", *overrides] for task in args.tasks}
    runs[long_name] = ["task=counting", f"train.steps={args.long_steps}", *args.override]
    with tempfile.TemporaryDirectory(prefix="end-to-end-bench-store-") as folder:
        template = create_template(Path(folder))
        chosen = modes(args.baseline, Path(folder) / "servers")
        results: dict[tuple[str, str], list[Measure]] = {(run, m.name): [] for run in runs for m in chosen}
        if any(mode.name == "base warm" for mode in chosen):  # start the baseline's server, unmeasured
            run_once("counting", ["train.steps=1"], next(m for m in chosen if m.name == "base warm"), template)
        total, done = args.repeat * len(results), 0
        for _ in range(args.repeat):  # interleaved, so that a change in the machine's load hits every mode
            for run, command in runs.items():
                for mode in chosen:
                    task, *rest = command
                    measure = run_once(task.removeprefix("task="), rest, mode, template)
                    results[(run, mode.name)].append(measure)
                    done += 1
                    print(f"[{done}/{total}] {run}, {mode.name}: {measure.wall:.2f} s", file=sys.stderr)
        if any(mode.name == "base warm" for mode in chosen):
            for socket in (Path(folder) / "servers").glob("*.sock"):
                socket.unlink()  # the old server exits once its socket is gone
            time.sleep(1.5)
    load = " / ".join(" ".join(f"{x:.2f}" for x in loads) for loads in (load_before, os.getloadavg()))
    lines = [
        f"# End-to-end benchmark: {len(args.tasks)} task(s), {args.repeat} repetition(s), medians",
        "",
        f"- date: {date}",
        f"- machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"- load average (1, 5, 15 min) before / after: {load}",
        f"- OpenBLAS kernels: {blas_kernels()}",
        f"- command: `python {' '.join([PROG, *(sys.argv[1:] if argv is None else argv)])}`",
        f"- baseline: {args.baseline or 'none'}",
        "",
        report_table(results, list(runs), chosen),
        "",
        "- wall: process start to exit; engine run: the engine's 'finished in' line (run-started to run-ended hook:"
        " training, evaluation, checkpoint, and waiting for the recording to finish); peak RSS: the run's own"
        " `ru_maxrss` (the recording process is a child it waited for: it counts if it was larger).",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
