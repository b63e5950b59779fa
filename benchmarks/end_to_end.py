"""Benchmark: each task's default run end to end, from process start to exit, and where its time goes.

For each tutorial task (counting, adder, echo, charlm, seq2seq by default) it runs
``python -m framework task=<task>`` in a fresh temporary directory as its cwd, ``--repeat`` times in
each of three modes (interleaved; medians reported):

* ``warm``: tracked, with a recorder server already running (every run after a user's first in 15
  minutes): the run's tracking worker is forked with MLflow loaded;
* ``cold``: tracked, with no recorder server running (a user's first run): the run starts one, which
  loads MLflow on the second core while the run trains (``FRAMEWORK_RECORDER_IDLE=0``: it exits with
  the run);
* ``off``: ``tracking.enabled=false``;

and measures, per run:

* wall time: from just before the process is started to its exit (``time.perf_counter`` around
  ``os.posix_spawn`` and ``os.wait4``, in a small launcher process that starts the run);
* peak memory: the child's own peak resident set size (``ru_maxrss`` of ``os.wait4``, in the
  launcher: a child's ``ru_maxrss`` is at least its spawner's peak RSS, and this script's is large;
  it covers the processes the child waited for too, e.g. ``git``, not the recorder server and its workers,
  which are not the run's children: the warm server's own peak is reported beside);
* the engine's run: its "<task> finished in X s" line, from just before the run-started hook to
  after the run-ended hook (training, evaluation, checkpoint and every tracking hook); the line's
  log timestamp (ms) places it on the wall clock, so its start is observable too;
* tracked, from the MLflow run: the timestamps (ms) of the first and last training step's
  metrics (``grad_norm`` is logged by training steps only), hence the training loop (first to last
  step, metric flushes included) and the startup (process start to the first step's metrics); the
  number of metric values logged; and the engine's own "Logged the model ... in X s" line.

Every time is relative to the process start, taken with ``time.time()`` just before ``posix_spawn``; the
child's log and MLflow timestamps come from the same clock. The store: the MLflow tables are created
once in a template database and the file is copied into each run's ``./mlruns/mlflow.db``, like a
user who has run before (``--store fresh``: each tracked run creates its store, which is included).

Second, the tracking overhead of a long run that logs its metrics every step: ``python -m framework
task=counting train.steps=10000`` (counting logs loss, grad_norm and two weights per step) in the three
modes: wall times and the overhead as a share of the tracked run's wall time.

    python benchmarks/end_to_end.py [--tasks counting adder ...] [--repeat 3] [--steps N] [--store template|fresh]
                                    [--long-task counting] [--long-steps 10000] [--quick]

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import PROG, add_override_option, blas_kernels, clean_env, fail, gist, require_positive, table

from framework.tracking.recorder_process import FOLDER_ENV, IDLE_ENV
from framework.tracking.recorder_server import pids_in_log

TIMEOUT = 3600.0  # seconds, for any one run
TASKS = ("counting", "adder", "echo", "charlm", "seq2seq")
MODES = ("warm", "cold", "off")  # tracked with a running recorder server, tracked starting one, untracked
TRACKED = ("warm", "cold")
LOG_TIME = r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]"
FINISHED = re.compile(LOG_TIME + r"\[framework\.core\.engine\]\[INFO\] - \S+ finished in ([0-9.]+) s", re.MULTILINE)
TRACKING_RUN = re.compile(
    LOG_TIME + r"\[framework\.tracking\.tracker\]\[INFO\] - Tracking run ([0-9a-f]+)$", re.MULTILINE
)
MODEL_LOGGED = re.compile(r"\] - Logged the model .* in ([0-9.]+) s")
STEP_METRIC = "grad_norm"  # logged by every training step, never by an evaluation

# Runs a command as its child and reports the child's start, wall time, exit code and own resource usage
# (python -S: no site imports, a small process; see spawn).
LAUNCHER = """
import json, os, sys, time

report, command = sys.argv[1], sys.argv[2:]
started_at = time.time()
start = time.perf_counter()
pid = os.posix_spawn(command[0], command, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as file:
    json.dump({"started_at": started_at, "wall": wall, "peak_kib": usage.ru_maxrss, "code": code}, file)
"""


@dataclass
class Child:
    """A finished child process: its start on the wall clock, wall time, peak RSS and output."""

    started_at: float  # time.time() just before posix_spawn
    wall: float  # seconds, process start to exit
    peak_kib: int  # ru_maxrss of os.wait4 (KiB on Linux)
    output: str  # standard output and error


@dataclass
class Measure:
    """One run, its times in seconds after the process start (None: not observable without tracking)."""

    task: str
    mode: str  # one of MODES
    wall: float
    peak_mib: float
    finished: float  # the engine's "finished in": run-started hook .. run-ended hook
    run_end: float  # the "finished in" line's log timestamp
    first_step: float | None = None  # the first training step's metric timestamp (end of step 1)
    last_step: float | None = None  # the last training step's metric timestamp
    steps: int | None = None  # training steps in MLflow
    values: int | None = None  # metric values logged
    model: float | None = None  # the engine's "Logged the model ... in X s"
    run_created: float | None = None  # the "Tracking run <id>" line: the tracking worker has created the run

    @property
    def run_start(self) -> float:
        """The run-started hook: the "finished in" line's timestamp minus its duration."""
        return self.run_end - self.finished

    @property
    def loop(self) -> float | None:
        """The training loop: the first to the last training step's metric timestamp."""
        if self.first_step is None or self.last_step is None:
            return None
        return self.last_step - self.first_step


def spawn(command: Sequence[str], folder: Path, what: str, env: dict[str, str]) -> Child:
    """Run ``command`` in ``folder/run`` with a clean environment and ``env`` through :data:`LAUNCHER`; fails on
    an error.

    The launcher, not this process, starts the child: a child's ``ru_maxrss`` never falls below the peak RSS
    of the process that spawned it (Linux records the spawner's high-water mark at ``exec``), and this one
    has imported mlflow, while the launcher is a bare interpreter (about 10 MiB).
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
    return Child(report["started_at"], report["wall"], report["peak_kib"], output)


def log_time(stamp: str) -> float:
    """A log line's local ``YYYY-MM-DD HH:MM:SS,mmm`` as seconds since the epoch."""
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def create_template(folder: Path) -> float:
    """Create the MLflow tables in ``folder/mlflow.db``; the seconds it took (the store's lazy imports included)."""
    from mlflow import MlflowClient

    for name in ("alembic", "mlflow.store.db.utils"):  # quiet about creating the tables, as the framework is
        logging.getLogger(name).setLevel(logging.WARNING)
    start = time.perf_counter()
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return time.perf_counter() - start


def read_tracked(measure: Measure, child: Child, cwd: Path, what: str) -> None:
    """Fill in the MLflow run's step timestamps, steps and metric values of a tracked run."""
    from mlflow import MlflowClient

    found = TRACKING_RUN.search(child.output)
    if found is None:
        fail(f"{what}: no 'Tracking run' line in its output")
    run_id = found.group(2)
    measure.run_created = log_time(found.group(1)) - child.started_at
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    histories = {key: client.get_metric_history(run_id, key) for key in client.get_run(run_id).data.metrics}
    stamps = [m.timestamp / 1000 - child.started_at for m in histories.get(STEP_METRIC, [])]
    if not stamps:
        fail(f"{what}: run {run_id} has no {STEP_METRIC} metric")
    measure.first_step, measure.last_step, measure.steps = min(stamps), max(stamps), len(stamps)
    measure.values = sum(len(history) for history in histories.values())
    model = MODEL_LOGGED.search(child.output)
    measure.model = float(model.group(1)) if model else 0.0


def run_once(task: str, overrides: Sequence[str], mode: str, template: Path | None, servers: Path) -> Measure:
    """One timed ``python -m framework task=<task> ...`` in a fresh temporary directory, in ``mode`` (warm: with
    the recorder server of ``servers``; cold: with a folder of recorder servers of its own, empty)."""
    what = f"`python -m framework task={task}` ({mode})"
    command = [sys.executable, "-m", "framework", f"task={task}", *overrides]
    if mode == "off":
        command.append("tracking.enabled=false")
    with tempfile.TemporaryDirectory(prefix="end-to-end-bench-") as folder:
        cwd = Path(folder) / "run"
        cwd.mkdir()
        if template is not None:
            (cwd / "mlruns").mkdir()
            shutil.copy(template, cwd / "mlruns" / "mlflow.db")
        recorder = {
            "warm": {FOLDER_ENV: str(servers), IDLE_ENV: "3600"},
            "cold": {FOLDER_ENV: str(Path(folder) / "recorder"), IDLE_ENV: "0"},
        }
        env = recorder.get(mode, {})
        child = spawn(command, Path(folder), what, env)
        finished = FINISHED.search(child.output)
        if finished is None:
            fail(f"{what}: no 'finished in' line in its output")
        run_end = log_time(finished.group(1)) - child.started_at
        measure = Measure(task, mode, child.wall, child.peak_kib / 1024, float(finished.group(2)), run_end)
        if mode != "off":
            read_tracked(measure, child, cwd, what)
    return measure


def server_peak(servers: Path) -> float | None:
    """The peak RSS (MiB) of the recorder server of ``servers`` (VmHWM), which is then stopped; None if none runs."""
    for log in servers.glob("*.log"):
        loaded, _ = pids_in_log(log)
        if not loaded:
            continue
        (pid,) = loaded
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        os.kill(pid, signal.SIGTERM)
        peak = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return int(peak.group(1)) / 1024 if peak else None
    return None


def median(measures: Sequence[Measure], value: Callable[[Measure], float | None]) -> float | None:
    """The median of ``value`` over the runs (None if it is not observable)."""
    values = [v for v in map(value, measures) if v is not None]
    return statistics.median(values) if values else None


def median_run(measures: Sequence[Measure]) -> Measure:
    """The repetition with the median wall time (the lower one of an even number)."""
    ordered = sorted(measures, key=lambda m: m.wall)
    return ordered[(len(ordered) - 1) // 2]


def seconds(value: float | None) -> str:
    """``1.23``, or ``–`` when not observable."""
    return "–" if value is None else f"{value:.2f}"


def count(value: float | None) -> str:
    """``1234``, or ``–`` when not observable."""
    return "–" if value is None else f"{value:.0f}"


def share(value: float | None, total: float) -> str:
    """``value`` and its share of ``total``, e.g. ``0.12 (8%)``; ``–`` when not observable."""
    return "–" if value is None else f"{value:.2f} ({100 * value / total:.0f}%)"


def walls(measures: Sequence[Measure]) -> str:
    """The median wall time, with the min–max of several repetitions."""
    values = [m.wall for m in measures]
    spread = f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""
    return f"{statistics.median(values):.2f}{spread}"


def task_table(results: dict[tuple[str, str], list[Measure]], tasks: Sequence[str]) -> str:
    """Per task: wall time in each mode, the overheads, the training loop, startup and peak RSS."""
    rows = []
    for task in tasks:
        warm, cold, off = (results[(task, mode)] for mode in MODES)
        wall = {mode: median(results[(task, mode)], lambda m: m.wall) for mode in MODES}
        rows.append(
            [
                task,
                count(median(warm, lambda m: m.steps)),
                *(walls(results[(task, mode)]) for mode in MODES),
                *(share(wall[mode] - wall["off"], wall[mode]) for mode in TRACKED),
                seconds(median(warm, lambda m: m.loop)),
                seconds(median(off, lambda m: m.finished)),
                seconds(median(warm, lambda m: m.first_step)),
                seconds(median(cold, lambda m: m.first_step)),
                seconds(median(off, lambda m: m.run_start)),
                f"{median(warm, lambda m: m.peak_mib):.0f}",
                f"{median(off, lambda m: m.peak_mib):.0f}",
            ]
        )
    header = [
        "task",
        "steps",
        "wall, warm (s)",
        "wall, cold (s)",
        "wall, off (s)",
        "tracking overhead, warm (s, % of warm)",
        "tracking overhead, cold (s, % of cold)",
        "training loop, warm (s)",
        "engine run, off (s)",
        "startup to first step, warm (s)",
        "startup to first step, cold (s)",
        "startup to run start, off (s)",
        "peak RSS warm (MiB)",
        "peak RSS off (MiB)",
    ]
    return table(header, rows)


def breakdown_table(results: dict[tuple[str, str], list[Measure]]) -> str:
    """Where a run's wall time goes, for the repetition with the median wall time."""
    rows = []
    for (task, mode), measures in results.items():
        m = median_run(measures)
        first = None if m.first_step is None else m.first_step - m.run_start
        last = None if m.last_step is None else m.run_end - m.last_step
        cells = [share(m.run_start, m.wall), share(m.finished, m.wall), share(first, m.wall), share(m.loop, m.wall)]
        cells += [share(last, m.wall), share(m.model, m.wall), share(m.wall - m.run_end, m.wall)]
        cells.append(share(m.run_created, m.wall))
        rows.append([task, mode, f"{m.wall:.2f}", *cells])
    header = [
        "task",
        "mode",
        "wall (s)",
        "A: start → run start",
        "B: engine run",
        "B1: run start → first step",
        "B2: training loop",
        "B3: last step → run end",
        "of B3: MLflow model",
        "C: run end → exit",
        "tracking worker: run created at",
    ]
    return table(header, rows)


def long_table(measures: dict[str, list[Measure]]) -> str:
    """The long run in each mode: values logged, wall time, engine run, loop, peak RSS, overheads."""
    wall_off = median(measures["off"], lambda m: m.wall)
    engine_off = median(measures["off"], lambda m: m.finished)
    assert wall_off is not None and engine_off is not None
    rows = []
    for mode in MODES:
        runs = measures[mode]
        overhead, in_loop = "–", "–"
        if mode != "off":
            wall, loop = median(runs, lambda m: m.wall), median(runs, lambda m: m.loop)
            values = median(runs, lambda m: m.values)
            assert wall is not None
            overhead = share(wall - wall_off, wall)
            if loop is not None and values:
                bound = max(loop - engine_off, 0.0)  # short runs: the untracked evaluation outweighs the loop
                in_loop = f"{bound:.2f} ({1e6 * bound / values:.0f} µs/value)"
        rows.append(
            [
                mode,
                count(median(runs, lambda m: m.steps)),
                count(median(runs, lambda m: m.values)),
                walls(runs),
                seconds(median(runs, lambda m: m.finished)),
                seconds(median(runs, lambda m: m.loop)),
                f"{median(runs, lambda m: m.peak_mib):.0f}",
                overhead,
                in_loop,
            ]
        )
    header = [
        "mode",
        "steps",
        "metric values logged",
        "wall (s)",
        "engine run (s)",
        "training loop (s)",
        "peak RSS (MiB)",
        "tracking overhead (s, % of the tracked wall)",
        "in the loop, at least (s): loop − engine run off",
    ]
    return table(header, rows)


def header_lines(args: argparse.Namespace, context: dict[str, Any]) -> list[str]:
    """The title and what was measured where: date, machine, load, commands, store."""
    load = " / ".join(" ".join(f"{x:.2f}" for x in context[k]) for k in ("load_before", "load_after"))
    steps = f" train.steps={args.steps}" if args.steps is not None else ""
    store = (
        "MLflow tables created once in a template store "
        f"({context['template']:.2f} s in this process, lazy imports included), "
        "its file copied into each run's fresh cwd as ./mlruns/mlflow.db "
        "(like a user who has run before)"
        if args.store == "template"
        else "a fresh store per tracked run: it creates the MLflow tables (included in its times)"
    )
    return [
        f"# End-to-end benchmark: {len(args.tasks)} task(s), {args.repeat} repetition(s), medians",
        "",
        f"- date: {context['date']}",
        f"- machine: {platform.platform()}, {os.cpu_count()} cores (os.cpu_count()), "
        f"Python {platform.python_version()}",
        f"- load average (1, 5, 15 min) before / after: {load}",
        f"- OpenBLAS kernels: {blas_kernels()}",
        f"- command: `python {' '.join([PROG, *context['argv']])}`",
        f"- runs: `python -m framework task=<task>{steps} [tracking.enabled=false]` "
        f"for task in {', '.join(args.tasks)}, and the long run "
        f"`python -m framework task={args.long_task} train.steps={args.long_steps} [tracking.enabled=false]`; "
        "each in a fresh temporary directory as its cwd, the modes interleaved",
        f"- store: {store}",
        "- modes: warm = tracked, a recorder server already running (started by an unmeasured run first);"
        " cold = tracked, no recorder server running (the run starts one, which exits with it); off = untracked",
        f"- the warm recorder server's own peak RSS: {count(context['server_peak'])} MiB (VmHWM; not in any"
        " run's peak RSS: it is not a child of the runs)",
        "",
    ]


def notes() -> list[str]:
    """What each column is."""
    return [
        "- wall: process start to exit (`perf_counter` around `os.posix_spawn` .. `os.wait4` in a bare launcher"
        " process); peak RSS: the child's `ru_maxrss` from `os.wait4` (the launcher's ~10 MiB is its floor).",
        "- engine run: the engine's 'finished in' line, run-started hook to run-ended hook (training, evaluation,"
        " checkpoint and all tracking hooks); untracked, that is training + evaluation + checkpoint.",
        "- training loop (tracked): the first to the last training step's metric timestamp in MLflow (ms),"
        " metric flushes included; not observable untracked.",
        "- startup to first step (tracked): process start to the first step's metric timestamp (interpreter,"
        " imports, Hydra, building the run, checking the store, one step; cold: MLflow loads in the recorder"
        " server meanwhile); startup to run start (off): process start to the engine's run start.",
        "- A + B + C = wall. A: interpreter, imports, Hydra, building and probing the run. B1: the run-started hooks"
        " (tracking: checking the store, the first message to the tracking worker) and step 1. B3: the"
        " final evaluation, samples, figures rendered to PNG, the model's files, the checkpoint, and waiting for"
        " the tracking worker to record everything and close the run (the 'MLflow model' column is the worker's"
        " time for the model). C: after the run: the log line, Hydra, interpreter exit. Run created at: when the"
        " tracking worker had opened the store and created the run (its 'Tracking run' line; cold: after the"
        " server had loaded MLflow), after the process start.",
        "- tracking overhead: the median tracked wall time minus the untracked one. In the loop, at least: the tracked"
        " training loop minus the whole untracked engine run (which holds the untracked loop), per metric value"
        " logged: a lower bound on what logging every step costs inside the loop.",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", default=None, help=f"the tasks to run (default: {' '.join(TASKS)}); commas also work"
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs per task and mode (median); default 3")
    parser.add_argument("--steps", type=int, default=None, help="train.steps of the task runs; default: each task's")
    parser.add_argument(
        "--store",
        choices=("template", "fresh"),
        default="template",
        help="copy a store with its tables created into each run (default), or let each tracked run create it",
    )
    add_override_option(parser, "run")
    parser.add_argument("--long-task", default="counting", help="the task of the long run; default counting")
    parser.add_argument("--long-steps", type=int, default=None, help="train.steps of the long run; default 10000")
    parser.add_argument(
        "--quick", action="store_true", help="counting with train.steps=20, one repetition, a 200-step long run"
    )
    args = parser.parse_args(argv)
    tasks = [name for word in (args.tasks or []) for name in word.split(",") if name]
    args.tasks = tasks or (["counting"] if args.quick else list(TASKS))
    if len(set(args.tasks)) != len(args.tasks):
        parser.error("--tasks names a task twice")
    defaults = {"steps": 20, "repeat": 1, "long_steps": 200} if args.quick else {"repeat": 3, "long_steps": 10000}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    require_positive(parser, args, ("repeat", "steps", "long_steps"))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run every task and the long run in every mode, and print the report."""
    args = parse_args(argv)
    context: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "load_before": os.getloadavg(),
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    overrides = [*([f"train.steps={args.steps}"] if args.steps is not None else []), *args.override]
    results: dict[tuple[str, str], list[Measure]] = {(t, mode): [] for t in args.tasks for mode in MODES}
    long: dict[str, list[Measure]] = {mode: [] for mode in MODES}
    total, done = args.repeat * (len(results) + len(long)), 0

    def progress(name: str, measure: Measure) -> None:
        nonlocal done
        done += 1
        print(f"[{done}/{total}] {name}, {measure.mode}: {measure.wall:.2f} s", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="end-to-end-bench-store-") as folder:
        template = None
        if args.store == "template":
            context["template"] = create_template(Path(folder))
            template = Path(folder) / "mlflow.db"
        servers = Path(folder) / "recorder"
        run_once("counting", ["train.steps=1"], "warm", template, servers)  # starts the warm recorder server
        for _ in range(args.repeat):  # interleaved, so that a change in the machine's load hits every mode
            for task, mode in results:
                measure = run_once(task, overrides, mode, template, servers)
                results[(task, mode)].append(measure)
                progress(task, measure)
            for mode in long:
                long_run = [f"train.steps={args.long_steps}", *args.override]
                measure = run_once(args.long_task, long_run, mode, template, servers)
                long[mode].append(measure)
                progress(f"{args.long_task} ({args.long_steps} steps)", measure)
        context["server_peak"] = server_peak(servers)
    context["load_after"] = os.getloadavg()
    lines = header_lines(args, context)
    spread = ", wall min–max)" if args.repeat > 1 else ")"
    lines += ["## Per task: tracked warm, cold, untracked (median" + spread, ""]
    lines += [task_table(results, args.tasks), ""]
    title = "## Where a run's wall time goes (s, % of its wall time)"
    lines += [title + ("; the repetition with the median wall time" if args.repeat > 1 else ""), ""]
    lines += [breakdown_table(results), ""]
    lines += [f"## Tracking overhead of a long run: task={args.long_task} train.steps={args.long_steps}", ""]
    lines += [long_table(long), "", *notes()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
