"""Close the runs nobody is left to close: ``python -m framework cleanup``.

A run whose training process and recording process were both killed (``kill -9``
of the process group, the machine losing power) stays RUNNING in MLflow. From
the launch directory (the store is found as a run finds it)::

    python -m framework cleanup                    # RUNNING runs whose process is known to be gone
    python -m framework cleanup --older-than 24h   # also those started over 24 h ago that cannot be checked
    python -m framework cleanup --dry-run          # say what would be marked, change nothing

Each run marked FAILED gets the tag ``error`` saying why; ``resume=<run id>``
still continues it from its last checkpoint. A run's process is named by its tag
``framework.process`` (:func:`process_tag`: host, pid and the process's start
time, so that a reused pid is not mistaken for it); on the same host the run's
process is gone when no process has that pid and start time. A run without the
tag, from another host, or from a system without ``/proc``, can only be judged
by its age, and only with ``--older-than``: give a duration longer than your
longest run.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

# "<host>:<pid>:<start>" of the process that trains the run; its recording process (framework.tracking.recorder)
# closes the run when it ends, however it ends. This module imports nothing of the framework at its top.
PROCESS_TAG = "framework.process"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def start_time(pid: int) -> str:
    """When process ``pid`` started, in clock ticks after boot (Linux's /proc); '' if unknown, no such process,
    or a process that has ended and waits to be reaped (a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if len(fields) < 20 or fields[0] == "Z" else fields[19]


def process_tag(pid: int | None = None) -> str:
    """The value of :data:`PROCESS_TAG` for process ``pid`` (default: this one): ``<host>:<pid>:<start>``."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{start_time(pid)}"


def process_gone(tag: str) -> bool | None:
    """Whether the process a :data:`PROCESS_TAG` names has ended; None if that cannot be told here."""
    parts = tag.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit() or not parts[2]:
        return None
    return start_time(int(parts[1])) != parts[2]


def duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``12h``, ``7d`` or a plain number of seconds."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 30s, 15m, 12h or 7d")
    return float(found[1]) * UNITS[found[2] or "s"]


@dataclass
class Verdict:
    """What to do with one RUNNING run, and why."""

    fail: bool
    reason: str


def judge(run: Any, now: float, older_than: float | None) -> Verdict:
    """Mark ``run`` FAILED if its process is known to be gone, or if it cannot be checked and is older than allowed."""
    tag = run.data.tags.get(PROCESS_TAG)
    gone = process_gone(tag) if tag else None
    if gone:
        return Verdict(True, f"its process {tag} is gone")
    if gone is False:
        return Verdict(False, f"its process {tag} is running")
    age = now - run.info.start_time / 1000
    started = f"started {age / 3600:.1f} h ago; its process cannot be checked here"
    if older_than is not None and age > older_than:
        return Verdict(True, started)
    return Verdict(False, f"{started} (--older-than marks such runs)")


def cleanup(uri: str, experiments: list[str], older_than: float | None, dry_run: bool) -> int:
    """Judge every RUNNING run of ``uri`` (of ``experiments``, default all); returns how many were marked FAILED."""
    from framework.core.errors import TrackingError
    from framework.tracking.store import check_server, pages, quiet_mlflow, sqlite_path

    quiet_mlflow()
    check_server(uri)
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise TrackingError(f"no tracking store at {database}")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    chosen = [client.get_experiment_by_name(name) for name in experiments] or client.search_experiments()
    missing = [name for name, found in zip(experiments, chosen, strict=False) if found is None]
    if missing:
        raise TrackingError(f"no experiment {', '.join(missing)} in {uri}")
    now, marked = time.time(), 0
    for experiment in chosen:
        search = partial(client.search_runs, [experiment.experiment_id], "attributes.status = 'RUNNING'")
        for run in pages(search):
            verdict = judge(run, now, older_than)
            name = f"{run.info.run_id} ({experiment.name}/{run.info.run_name})"
            if not verdict.fail:
                print(f"{name}: left RUNNING: {verdict.reason}")
                continue
            marked += 1
            print(f"{name}: {'would be marked' if dry_run else 'marked'} FAILED: {verdict.reason}")
            if not dry_run:
                error = f"marked FAILED by `python -m framework cleanup`: {verdict.reason}; resume={run.info.run_id}"
                client.set_tag(run.info.run_id, "error", f"{error} continues it")
                client.set_terminated(run.info.run_id, "FAILED")
    return marked


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m framework cleanup``."""
    command = argparse.ArgumentParser(
        prog="python -m framework cleanup",
        description="Mark FAILED the RUNNING runs whose process is gone (killed with its recording process, "
        "or on a machine that went down).",
    )
    command.add_argument(
        "--older-than",
        type=duration,
        metavar="DURATION",
        help="also mark runs whose process cannot be checked (no framework.process tag, another host) "
        "started longer ago than this: 30m, 12h, 7d",
    )
    command.add_argument(
        "--uri", help="the tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db)"
    )
    command.add_argument(
        "--experiment", action="append", default=[], metavar="NAME", help="only this experiment (repeatable)"
    )
    command.add_argument("--dry-run", action="store_true", help="say what would be marked, change nothing")
    return command


def main(argv: list[str]) -> int:
    """Entry point of ``python -m framework cleanup ARGS...``; returns the exit code."""
    from framework.core.errors import TrackingError, described, print_error
    from framework.tracking.store import resolve_uri

    args = parser().parse_args(argv)
    uri = resolve_uri(args.uri, Path.cwd())
    try:
        marked = cleanup(uri, args.experiment, args.older_than, args.dry_run)
    except TrackingError as error:
        print_error(error)
        return 1
    except Exception as error:  # the store failing: one line naming it
        print_error(f"cannot clean up {uri}: {described(error)}")
        return 1
    print(f"{marked} run(s) {'would be ' if args.dry_run else ''}marked FAILED in {uri}")
    return 0
