"""The training process's side of the recording process (:mod:`framework.tracking.recorder`).

One recording process per training process, started at its first tracked run (or, by ``python -m
framework``, before anything else: :func:`prewarm`) and reused by its later runs (a sweep's jobs in one
process, a notebook's runs). It is a child in a process group of its own: Ctrl-C is the training process's
to handle, and killing the command's process group leaves it to close the run as KILLED. It ends with the
training process: when that exits (or is killed) the recorder's input ends, and it exits after closing what
is open; at the interpreter's exit it is given :data:`EXIT_WAIT` seconds, then killed.

Messages go to it as JSON lines, written by a thread of their own: training never waits for the store.
Nothing here imports MLflow, numpy or Hydra.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("framework.tracking")

EXIT_WAIT = 10.0  # seconds the recorder has to finish when its training process exits


def plain(value: Any) -> Any:
    """A numpy scalar or array as the Python number or list JSON can hold (``json.dumps``'s ``default``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class RecordingProcess:
    """A running ``python -m framework.tracking.recorder`` and what it has answered."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "framework.tracking.recorder"],
            cwd=Path(__file__).resolve().parents[2],  # `-m framework...` finds this framework first
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            process_group=0,  # Ctrl-C and a kill of the command's group are the training process's
            text=True,
        )
        self.outbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.tokens = 0  # the number of the last run sent to it
        self.seqs = 0  # the number of the last metrics message sent to it
        self.started: dict[int, str] = {}  # token -> the id of the run it created (or reopened)
        self.experiments: dict[int, str] = {}  # token -> the id of that run's experiment
        self.ended: set[int] = set()  # the tokens of the runs it has closed
        self.stored = 0  # the highest ``seq`` of metrics the store has taken
        self.failures: dict[int, list[str]] = {}  # token -> every ``error`` answered about that run
        self.gone = False  # its output ended: it exited (or was killed)
        self.heard = time.monotonic()  # when it last answered (it says ``ready`` once MLflow is loaded)
        threading.Thread(target=self._write, daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        """Whether it still runs and answers."""
        return not self.gone and self.process.poll() is None

    def send(self, op: str, **fields: Any) -> None:
        """Send ``{"op": op, **fields}`` (queued: never blocks)."""
        self.outbox.put(json.dumps({"op": op, **fields}, default=plain) + "\n")

    def next_token(self) -> int:
        """A number for the next run sent to it (its ``start`` or ``close``)."""
        self.tokens += 1
        return self.tokens

    def next_seq(self) -> int:
        """A number for the next metrics message."""
        self.seqs += 1
        return self.seqs

    def wait_for(self, condition: Any, timeout: float | None) -> bool:
        """Wait until ``condition()`` (called under the lock) or the process is gone; whether it holds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while not condition() and not self.gone:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self.changed.wait(left if left is None else min(left, 1.0))
            return bool(condition())

    def finish(self, timeout: float) -> None:
        """End its input and give it ``timeout`` seconds to exit; then kill it."""
        self.outbox.put(None)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Stop it now (it may be stopped or stuck in a store call) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        with self.changed:
            self.gone = True
            self.changed.notify_all()

    def _write(self) -> None:
        stream = self.process.stdin
        while (data := self.outbox.get()) is not None:
            try:
                stream.write(data)
                stream.flush()
            except (OSError, ValueError):
                return
        with contextlib.suppress(OSError):
            stream.close()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self.process.stdout:
                answer = json.loads(line)
                self.heard = time.monotonic()
                if answer["op"] == "log":
                    log.log(answer["level"], "%s", answer["message"])
                    continue
                if answer["op"] == "ready":
                    continue
                with self.changed:
                    token = answer["token"]
                    if answer["op"] == "started":
                        self.started[token] = answer["run_id"]
                        self.experiments[token] = answer["experiment_id"]
                        log.info("Tracking run %s", answer["run_id"])
                    elif answer["op"] == "stored":
                        self.stored = answer["seq"]
                    elif answer["op"] == "error":
                        self.failures.setdefault(token, []).append(answer["message"])
                    elif answer["op"] == "ended":
                        self.ended.add(token)
                    self.changed.notify_all()
        with self.changed:
            self.gone = True
            self.changed.notify_all()


_process: RecordingProcess | None = None


def recording_process() -> RecordingProcess:
    """This process's recording process: the running one, or a new one."""
    global _process
    if _process is None or not _process.alive():
        if _process is not None:
            _process.kill()
        _process = RecordingProcess()
    return _process


def forget(process: RecordingProcess) -> None:
    """Kill ``process`` (it stopped answering) so that the next run starts another."""
    global _process
    process.kill()
    if _process is process:
        _process = None


@atexit.register
def _finish() -> None:
    if _process is None:
        return
    if _process.tokens:
        _process.finish(EXIT_WAIT)
    else:  # started early for a run that never started (a mistake in the config): nothing to finish
        _process.kill()


def close_abandoned(uri: str, run_id: str, status: str, error: str, timeout: float) -> str | None:
    """Close run ``run_id``, left open by a recording process that stopped answering, with a new one; None when
    it is closed within ``timeout`` seconds, else why not."""
    process = RecordingProcess()
    try:
        token = process.next_token()
        process.send("close", token=token, uri=uri, run_id=run_id, status=status, error=error)
        if process.wait_for(lambda: token in process.ended, timeout) and token not in process.failures:
            return None
        failures = process.failures.get(token)
        return failures[-1] if failures else f"no answer within {timeout:g} s"
    finally:
        process.finish(0)


MULTIRUN_FLAGS = ("-m", "--multirun")
PRINT_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc")


def tracking_switched_off(args: Sequence[str]) -> bool:
    """Whether the command line's last ``tracking.enabled=...`` (``+``/``++`` too) is false."""
    values = [value for key, _, value in (a.lstrip("+").partition("=") for a in args) if key == "tracking.enabled"]
    return bool(values) and values[-1].strip().lower() == "false"


def prewarm(args: Sequence[str], subcommands: Sequence[str]) -> None:
    """Start the recording process now if the command line ``args`` will likely record one run, so that MLflow
    loads on the second core while Hydra composes the config and the engine builds the run.

    Not for a subcommand, a command that only prints (``--cfg``, ``--help``...), ``tracking.enabled=false``, or a
    multirun (its jobs may run in other processes, each of which starts its own).
    """
    if args and args[0] in subcommands:
        return
    if any(arg in MULTIRUN_FLAGS or arg.split("=")[0] in PRINT_FLAGS for arg in args) or tracking_switched_off(args):
        return
    recording_process()
