"""The training process's end of the tracking worker (:mod:`framework.recorder`).

Light on purpose: ``python -m framework`` starts a worker from here before it imports anything
else (:func:`prewarm`), so that MLflow loads on the second core while Hydra composes the config and
the engine builds and trains the run. Nothing here imports MLflow, numpy or Hydra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("framework.tracking")

SUBCOMMANDS = ("list", "docs", "migrate", "cleanup")  # `python -m framework <word>`: no run, no worker
MULTIRUN_FLAGS = ("-m", "--multirun")  # the jobs start their own workers, wherever they run
TRACKING_SWITCH = "tracking.enabled"

_spare: RecorderProcess | None = None  # started by prewarm(), taken by the run's tracker


class TrackingError(RuntimeError):
    """The tracking store cannot be used; ``str()`` is one line naming it."""


def plain(value: Any) -> Any:
    """A numpy scalar or array as the Python number or list JSON can hold (``json.dumps``'s ``default``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class RecorderProcess:
    """A tracking worker: messages go to its standard input as JSON lines; a thread reads its answers,
    so that the run's id is logged as soon as the run exists and a failure is seen at the next check."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "framework.recorder"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.run_id: str | None = None
        self.failure: str | None = None
        self.ended = threading.Event()
        self.reader = threading.Thread(target=self._read_answers, daemon=True)
        self.reader.start()

    def send(self, op: str, **fields: Any) -> None:
        """Send ``{"op": op, **fields}``; a worker that is gone is a failure (raised by :meth:`check`)."""
        try:
            self.process.stdin.write(json.dumps({"op": op, **fields}, default=plain).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            self.failure = self.failure or f"the tracking worker stopped (exit code {self.process.wait()})"

    def check(self) -> None:
        """Raise :class:`TrackingError` if recording failed."""
        if self.failure is not None:
            raise TrackingError(self.failure)

    def close(self) -> None:
        """Wait until the worker has recorded everything it was sent and exited."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self.process.wait()
        self.reader.join()

    def _read_answers(self) -> None:
        for line in self.process.stdout:
            answer = json.loads(line)
            if answer["op"] == "started":
                self.run_id = answer["run_id"]
                log.info("Tracking run %s", self.run_id)
            elif answer["op"] == "log":
                log.log(answer["level"], "%s", answer["message"])
            elif answer["op"] == "error":
                self.failure = answer["message"]
            elif answer["op"] == "ended":
                self.ended.set()
        if not self.ended.is_set() and self.failure is None:
            self.failure = f"the tracking worker stopped (exit code {self.process.wait()})"


def tracking_switched_off(args: Sequence[str]) -> bool:
    """Whether the command line's last ``tracking.enabled=...`` (``+``/``++`` too) is false."""
    values = [value for key, _, value in (arg.lstrip("+").partition("=") for arg in args) if key == TRACKING_SWITCH]
    return bool(values) and values[-1].strip().lower() == "false"


def prewarm(args: Sequence[str]) -> None:
    """Start a spare worker for the single run that the command line ``args`` will likely start.

    Not for a subcommand, a multirun or ``tracking.enabled=false``: a worker loading MLflow for
    nothing takes a second of the other core and slows this one, which shares the machine's caches
    with it (an untracked counting run took 0.90 s with it, 0.84 s without). If no run takes it
    (tracking switched off in a config file, a bad config), it exits with this process, having
    recorded nothing.
    """
    global _spare
    if (args and args[0] in SUBCOMMANDS) or any(arg in MULTIRUN_FLAGS for arg in args) or tracking_switched_off(args):
        return
    _spare = RecorderProcess()


def take() -> RecorderProcess:
    """The spare worker if there is one that still runs, else a new one."""
    global _spare
    spare, _spare = _spare, None
    if spare is not None and spare.process.poll() is None:
        return spare
    return RecorderProcess()
