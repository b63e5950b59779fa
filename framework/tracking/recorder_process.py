"""The training process's end of the tracking worker (:mod:`framework.tracking.recorder`).

Each tracked run talks to a worker of its own: a process forked, for the run, by the recorder server
(:mod:`framework.tracking.recorder_server`), which has MLflow loaded and stays up between runs. The server is
found by its socket; when there is none, the first run starts one, and its worker waits for MLflow to
load on the second core while the run trains, as a worker of its own would. Every later run with the
same interpreter, framework code and MLflow gets a worker with MLflow loaded. The server exits after
``FRAMEWORK_RECORDER_IDLE`` seconds (default 900) with no run to record.

Light on purpose: ``python -m framework`` starts the server from here before it imports anything else
(:func:`prewarm`). Nothing here imports MLflow, numpy or Hydra.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import queue
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framework.cli.subcommands import SUBCOMMANDS
from framework.core.errors import TrackingError
from framework.tracking.recorder_server import load_failure

log = logging.getLogger("framework.tracking.tracker")

MULTIRUN_FLAGS = ("-m", "--multirun")  # each job connects when it starts, wherever it runs
TRACKING_SWITCH = "tracking.enabled"
IDLE_ENV = "FRAMEWORK_RECORDER_IDLE"  # seconds the server waits for another run before it exits
DEFAULT_IDLE = 900.0
FOLDER_ENV = "FRAMEWORK_RECORDER_DIR"  # where servers keep their sockets; default <tmp>/framework-recorder-<uid>
IDENTITY_ENV_PREFIX = "MLFLOW_"  # MLflow's settings, some read when it is imported: a server per value
LOADED = ("mlflow", "sqlalchemy", "pandas", "numpy")  # what a server loads: a new server when one changes
SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path (Linux's sun_path holds 108 with the final NUL)
CONNECT_TIMEOUT = 60.0  # seconds for a starting server to listen
RESTART_AFTER = 0.2  # seconds before starting a server again when the last one found another running
NOTICE_AFTER = 3.0  # seconds a run waits for its worker at its end before it says what it is waiting for

_starting: subprocess.Popen | None = None  # the server this process started, until it listens


def plain(value: Any) -> Any:
    """A numpy scalar or array as the Python number or list JSON can hold (``json.dumps``'s ``default``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def idle_seconds() -> float:
    """``$FRAMEWORK_RECORDER_IDLE`` (seconds >= 0), else :data:`DEFAULT_IDLE`."""
    text = os.environ.get(IDLE_ENV, "").strip()
    if not text:
        return DEFAULT_IDLE
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise TrackingError(f"{IDLE_ENV}={text}: expected a number of seconds >= 0 (0: the server exits with its run)")
    return seconds


def identity() -> str:
    """The server a run may use: a hash of this interpreter, the framework's modules and those of the packages
    a server loads (:data:`LOADED`, found as this process would import them; their path, size and time) and
    the ``MLFLOW_*`` environment: a change to any of them needs a new server. (Every other variable goes to the
    worker with each run.)"""
    package = Path(__file__).resolve().parent
    found = [importlib.util.find_spec(name) for name in LOADED]
    parts = [sys.executable, *(spec.origin if spec and spec.origin else "missing" for spec in found)]
    for path in [*sorted(package.glob("*.py")), *(Path(spec.origin) for spec in found if spec and spec.origin)]:
        stat = path.stat()
        parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    parts += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(IDENTITY_ENV_PREFIX))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def server_address() -> Path:
    """The socket of the recorder server for this process: ``<folder>/<identity>.sock`` in a folder only
    this user can enter (``$FRAMEWORK_RECORDER_DIR``, default ``<tmp>/framework-recorder-<uid>``): whoever
    connects gets a worker that writes files as this user."""
    folder = Path(os.environ.get(FOLDER_ENV) or Path(tempfile.gettempdir()) / f"framework-recorder-{os.getuid()}")
    address = folder / f"{identity()}.sock"
    if (size := len(os.fsencode(address))) > SOCKET_PATH_MAX:
        raise TrackingError(
            f"the tracking worker's folder {folder} is too deep for a Unix socket ({address} has {size} bytes, "
            f"at most {SOCKET_PATH_MAX}): set {FOLDER_ENV} to a shorter path"
        )
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = folder.stat()
    except OSError as error:
        raise TrackingError(f"cannot create the tracking worker's folder {folder}: {error.strerror}") from None
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise TrackingError(
            f"the tracking worker's folder {folder} is open to other users (owner uid {status.st_uid}, mode "
            f"{status.st_mode & 0o777:o}): set {FOLDER_ENV} to a folder only you can enter (mode 700)"
        )
    return address


def server_failure(log: Path, what: str, said: str | None = None) -> str:
    """The line saying ``what`` went wrong with the recorder server of ``log``: with the error that stopped it while
    it loaded (``said``, or the server's log), and where its log is."""
    reason = said or load_failure(log)
    return what + (f": {reason}" if reason else "") + f" (its server's log: {log})"


def start_server(address: Path, idle: float) -> subprocess.Popen:
    """Start a recorder server for ``address`` that exits after ``idle`` seconds without a run, in a session of its
    own (Ctrl-C and the terminal closing do not reach it); it exits at once if another one runs."""
    return subprocess.Popen(
        [sys.executable, "-m", "framework.tracking.recorder_server", str(address), str(idle)],
        cwd=Path(__file__).resolve().parents[1],  # `-m framework...` finds this framework first
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # what it says before it opens its log: read if it fails to start
        start_new_session=True,
    )


def try_connect(address: Path) -> socket.socket | None:
    """A connection to the server listening at ``address``, None if none does."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(address))
    except (FileNotFoundError, ConnectionRefusedError):
        connection.close()
        return None
    return connection


def connect(address: Path, idle: float, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connection to the recorder server at ``address``, starting one (see :func:`start_server`) if none listens."""
    global _starting
    deadline, started_at = time.monotonic() + timeout, -RESTART_AFTER
    while (connection := try_connect(address)) is None:
        now, code = time.monotonic(), None if _starting is None else _starting.poll()
        if code not in (None, 0):
            said = _starting.stderr.read().decode(errors="replace").strip().splitlines()  # before it opened its log
            _starting = None
            raise TrackingError(
                server_failure(
                    address.with_suffix(".log"),
                    f"the tracking worker's server did not start (exit code {code})",
                    said[-1] if said else None,
                )
            )
        if (_starting is None or code == 0) and now - started_at >= RESTART_AFTER:  # none, or another one runs
            _starting, started_at = start_server(address, idle), now
        if now > deadline:
            raise TrackingError(f"the tracking worker's server at {address} did not listen within {timeout:.0f} s")
        time.sleep(0.005)
    return connection


class RecorderConnection:
    """A run's connection to its tracking worker: messages go to it as JSON lines, written by a thread of their own
    (a run whose server is still loading MLflow trains on: the messages wait here, not in a full socket); another
    thread reads its answers, so that the run's id is logged as soon as the run exists and a failure is seen at
    the next check.

    The first bytes tell the worker this process's working folder and environment, and hand it this process's
    standard error, where its warnings go."""

    def __init__(self, connection: socket.socket, server_log: Path) -> None:
        self.socket = connection
        self.server_log = server_log
        hello = json.dumps({"cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        message = struct.pack("!I", len(hello)) + hello
        try:
            sent = socket.send_fds(self.socket, [message], [sys.stderr.fileno()])
        except (OSError, ValueError):  # no standard error to hand over
            sent = self.socket.send(message)
        self.socket.sendall(message[sent:])
        self.run_id: str | None = None
        self.pid: int | None = None  # the worker's, once it has answered
        self.failure: str | None = None
        self.reported: str | None = None  # the failure check() last raised
        self.ended = threading.Event()
        self.delivered = False  # every message, ``end`` included, has gone to the worker, which records them all
        self.outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.writer = threading.Thread(target=self._write_messages, daemon=True)
        self.reader = threading.Thread(target=self._read_answers, daemon=True)
        self.writer.start()
        self.reader.start()

    def send(self, op: str, **fields: Any) -> None:
        """Send ``{"op": op, **fields}``; a worker that is gone is a failure (raised by :meth:`check`)."""
        self.outbox.put(json.dumps({"op": op, **fields}, default=plain).encode() + b"\n")

    def check(self) -> None:
        """Raise :class:`TrackingError` if recording failed."""
        if self.failure is not None:
            self.reported = self.failure
            raise TrackingError(self.failure)

    def close(self) -> None:
        """Wait until the worker has recorded everything it was sent and exited; if that takes longer than
        :data:`NOTICE_AFTER` seconds (a slow or hung store), say once what the run is waiting for."""
        self.outbox.put(None)
        if not self.wait_closed(NOTICE_AFTER):
            log.warning(
                "still recording %s: waiting for its tracking worker%s to write it to the store "
                "(Ctrl-C leaves it to finish in the background)",
                self.run_name(),
                self.pid_part(),
            )
            self.wait_closed(None)
        self.socket.close()

    def left_recording(self, status: str) -> str:
        """The line for Ctrl-C while the worker, :attr:`delivered` everything, records the run's end (``status``)."""
        closes = f"closes it as {status}" if self.failure is None else "tries to close it as FAILED"
        worker = f"its tracking worker{self.pid_part()}"
        return f"interrupted while recording {self.run_name()}: {worker} goes on in the background and {closes}"

    def wait_closed(self, timeout: float | None) -> bool:
        """Whether, within ``timeout`` seconds (None: however long it takes), every message went to the worker and
        the worker has closed its end."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        self.writer.join(left())
        if self.writer.is_alive():
            return False
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_WR)
        self.reader.join(left())
        return not self.reader.is_alive()

    def run_name(self) -> str:
        """``the run <id>``, or what a run the worker has not created yet is."""
        return f"the run {self.run_id}" if self.run_id else "the run (not yet created in the store)"

    def pid_part(self) -> str:
        """`` (pid N)`` once the worker has said its process id, else nothing."""
        return f" (pid {self.pid})" if self.pid else ""

    def _write_messages(self) -> None:
        while (data := self.outbox.get()) is not None:
            try:
                self.socket.sendall(data)
            except OSError:
                self.failure = self.failure or self.stopped()
                return
        self.delivered = True

    def _read_answers(self) -> None:
        with contextlib.suppress(OSError):
            for line in self.socket.makefile("rb"):
                answer = json.loads(line)
                if answer["op"] == "started":
                    self.run_id, self.pid = answer["run_id"], answer["pid"]
                    log.info("Tracking run %s", self.run_id)
                elif answer["op"] == "log":
                    log.log(answer["level"], "%s", answer["message"])
                elif answer["op"] == "error":
                    self.failure = answer["message"]
                elif answer["op"] == "ended":
                    self.ended.set()
        if not self.ended.is_set() and self.failure is None:
            self.failure = self.stopped()

    def stopped(self) -> str:
        """The failure of a worker that went away without a word (or of its server, which failed to load)."""
        return server_failure(self.server_log, "the tracking worker stopped")


def tracking_switched_off(args: Sequence[str]) -> bool:
    """Whether the command line's last ``tracking.enabled=...`` (``+``/``++`` too) is false."""
    values = [value for key, _, value in (arg.lstrip("+").partition("=") for arg in args) if key == TRACKING_SWITCH]
    return bool(values) and values[-1].strip().lower() == "false"


def prewarm(args: Sequence[str]) -> None:
    """Start the recorder server now if the command line ``args`` will likely start a tracked run and none runs,
    so that MLflow loads on the second core while Hydra composes the config and the engine builds the run.

    Not for a subcommand or ``tracking.enabled=false`` (a server loading MLflow for nothing takes a second of
    the other core and slows this one, which shares the machine's caches with it); a multirun's jobs connect
    when they start. A problem here is left for the run to report.
    """
    global _starting
    if (args and args[0] in SUBCOMMANDS) or any(arg in MULTIRUN_FLAGS for arg in args) or tracking_switched_off(args):
        return
    with contextlib.suppress(TrackingError):
        address, idle = server_address(), idle_seconds()
        if not address.exists():  # a server removes its socket when it exits; one killed is replaced on connect
            _starting = start_server(address, idle)


def open_worker() -> RecorderConnection:
    """A connection to a new tracking worker for one run (see :class:`RecorderConnection`)."""
    address, idle = server_address(), idle_seconds()
    return RecorderConnection(connect(address, idle), address.with_suffix(".log"))
