"""The recorder server: a process with MLflow loaded that forks a tracking worker for every run.

``python -m framework.tracking.recorder_server SOCKET IDLE`` is started by a training process that finds no server
at ``SOCKET`` (:mod:`framework.tracking.recorder_process`), in a session of its own. It listens at once, then loads
everything a worker needs (MLflow, its SQL store, the model code; about 2 s of CPU) and accepts
connections: each one is a run, served by a forked child (:func:`framework.tracking.recorder.serve_connection`)
that starts with all of that loaded. It exits when no worker has run for ``IDLE`` seconds, when ``SOCKET``
is deleted (nobody can reach it then), and at once if another server holds ``SOCKET``'s lock. Its log,
``SOCKET`` with the suffix ``.log``, says when it has loaded and the pid of every worker it forks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO

LOAD_FAILED = "cannot load: "  # the last line of the log of a server that failed to load, before the error


def pids_in_log(log: Path) -> tuple[list[int], list[int]]:
    """The pids a server's log names: (the server's, once it has loaded; each worker's it has forked)."""
    text = log.read_text()
    return [int(pid) for pid in re.findall(r"^pid (\d+): loaded", text, re.M)], [
        int(pid) for pid in re.findall(r"^worker (\d+)$", text, re.M)
    ]


def load_failure(log: Path) -> str | None:
    """The error (``Type: message``) that stopped the server of ``log`` while it loaded; None if none did."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return None
    return lines[-1].removeprefix(LOAD_FAILED) if lines and lines[-1].startswith(LOAD_FAILED) else None


def load() -> None:
    """Import what every worker needs, and do MLflow's slow first-model preparation, before any fork."""
    import mlflow.store.model_registry.sqlalchemy_store
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    from framework.tracking import models, recorder  # noqa: F401

    models.warm_up()
    if threading.active_count() > 1:  # a thread's locks would be copied into every worker, held
        print(f"warning: {threading.active_count()} threads before forking workers", file=sys.stderr)


def fork_worker(connection: socket.socket, listener: socket.socket, lock: IO[str]) -> int:
    """Fork the worker of the run at the other end of ``connection``; its pid. A worker that fails prints the
    traceback on its standard error (the run's, once it has taken it; before, this server's log) and exits 1."""
    pid = os.fork()
    if pid:
        connection.close()
        print(f"worker {pid}", flush=True)
        return pid
    code = 0
    try:
        listener.close()
        lock.close()  # the server's lock is released when the server exits, whatever its workers do
        from framework.tracking.recorder import serve_connection

        serve_connection(connection)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)  # skip collecting MLflow's objects at exit


def reap(workers: set[int]) -> None:
    """Forget the workers that have exited."""
    for pid in list(workers):
        try:
            exited = os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            exited = True
        if exited:
            workers.discard(pid)


def serve(listener: socket.socket, lock: IO[str], address: Path, idle: float) -> None:
    """Fork a worker per connection until no worker has run for ``idle`` seconds or ``address`` is deleted; then
    stop listening and serve the connections already made."""
    workers: set[int] = set()
    last_busy = time.monotonic()
    while address.exists():
        reap(workers)
        now = time.monotonic()
        if workers:
            last_busy, wait = now, 1.0  # the idle time starts when the last worker has exited
        elif now - last_busy >= idle:
            break
        else:
            wait = min(1.0, idle - (now - last_busy))
        if select.select([listener], [], [], wait)[0]:
            workers.add(fork_worker(listener.accept()[0], listener, lock))
    address.unlink(missing_ok=True)  # from here on, a run starts a new server
    listener.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            fork_worker(listener.accept()[0], listener, lock)


def main(argv: list[str]) -> None:
    """Listen at ``argv[0]`` unless another server does; serve runs until ``argv[1]`` seconds pass idle."""
    address, idle = Path(argv[0]), float(argv[1])
    lock = open(address.with_suffix(".lock"), "w")  # noqa: SIM115 - held until the server exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another server listens here (or is closing: the run that started this one retries)
    with open(address.with_suffix(".log"), "w") as said:
        os.dup2(said.fileno(), sys.stdout.fileno())
        os.dup2(said.fileno(), sys.stderr.fileno())
    address.unlink(missing_ok=True)  # a killed server's socket
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(address))
    listener.listen(64)
    started = time.perf_counter()
    try:
        load()
    except Exception as error:  # e.g. a broken MLflow: the runs waiting for a worker read this line
        traceback.print_exc()
        print(f"{LOAD_FAILED}{type(error).__name__}: {' '.join(str(error).split())}", flush=True)
        address.unlink(missing_ok=True)
        raise SystemExit(1) from None
    print(f"pid {os.getpid()}: loaded in {time.perf_counter() - started:.2f} s; idle timeout {idle:g} s", flush=True)
    serve(listener, lock, address, idle)


if __name__ == "__main__":
    main(sys.argv[1:])
