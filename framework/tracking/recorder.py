"""The tracking worker: a process of its own that does everything MLflow does for one run.

The recorder server (:mod:`framework.tracking.recorder_server`) forks one for every run the tracker
(:mod:`framework.tracking.tracker`) starts, with MLflow already loaded; it opens the store and records on
the second core while the training process trains, so training never waits for either. The training
process sends it one JSON object per line on their connection; it answers, one JSON object per line:

========================================  ==============================================
message (``op`` and fields)               what the worker does
========================================  ==============================================
``start``: uri, experiment, run,          creates the run (params, config, overrides, tags),
fallback, scratch                         or reopens ``run.resume``; answers ``started``
``metrics``: entries [key, value, ms,     writes them (straight into an embedded store's metric
step]                                     tables, else ``log_batch``)
``text`` / ``table``: data, path          logs a text or a JSON table artifact
``artifact``: file, folder, remove        logs a file (figures, checkpoints), then deletes it if ``remove``
``model``: files, register_as             logs the exported network as the model ``model``
``end``: status, error                    closes the run; answers ``ended`` and exits
========================================  ==============================================

Answers: ``started`` (run_id, pid), ``log`` (level, message: the worker's log lines, logged by the
training process), ``error`` (message: one line naming the store), ``ended``.

When recording fails, the worker answers ``error`` and from then on writes every metric it receives
to the ``fallback`` file named in ``start`` (JSON lines), so nothing is lost, and tries nothing else
until ``end``: then it tries once, for at most :data:`CLOSE_WAIT` seconds (a store that failed may
hang), to close the run as FAILED with the reason, and answers ``error`` again with the reason and
what became of the run. When its input ends without ``end`` (the training process was killed), it
records what it received and closes the run as KILLED: ``resume=<run id>`` continues it from its last
checkpoint. Either way it removes the ``scratch`` folder named in ``start``, where the training process
leaves the files it asks it to log (figures, the exported model): the training process may have gone
before the worker logged them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shlex
import shutil
import signal
import socket
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from framework.core.config import flatten
from framework.core.errors import TrackingError, described
from framework.tracking.cleanup import PROCESS_TAG, process_tag
from framework.tracking.tracker import (
    DIRECTION_TAG,
    LOGGED_ARTIFACTS_TAG,
    MAX_PARAM_LENGTH,
    METRICS_PER_BATCH,
    OBJECTIVE_TAG,
    PARAMS_PER_BATCH,
    PARENT_TAG,
    SQLITE_SCHEMA,
    SWEEP_TAG,
    chunks,
    connect,
    git_commit,
    log_table,
    schema_revision,
    sqlite_path,
    sweep_parent,
    write_metrics,
)

log = logging.getLogger("framework.tracking.recorder")

ABANDONED = "the training process ended without closing the run (killed?); resume={run_id} continues it"
CLOSE_WAIT = 10.0  # seconds the worker gives a store that failed to close the run as FAILED


class Answers(logging.Handler):
    """The worker's answers to the training process, one JSON object per line; log records become ``log``."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(logging.INFO)
        self.stream: IO[str] | None = stream
        self.lock_answers = threading.Lock()

    def send(self, op: str, **fields: Any) -> None:
        """Answer ``{"op": op, **fields}``; once the training process is gone, answers go nowhere."""
        with self.lock_answers:
            if self.stream is None:
                return
            try:
                self.stream.write(json.dumps({"op": op, **fields}) + "\n")
                self.stream.flush()
            except OSError:  # the training process was killed: the run is still recorded
                self.stream = None

    def emit(self, record: logging.LogRecord) -> None:
        self.send("log", level=record.levelno, message=record.getMessage())


class Recorder:
    """One run in MLflow, driven by the training process's messages."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.client: Any = None
        self.uri = ""
        self.run_id: str | None = None
        self.fast_store: Path | None = None  # an embedded store whose metric tables are written directly
        self.fallback: Path | None = None
        self.tables: list[dict[str, str]] = []  # the run's tables so far, as its mlflow.loggedArtifacts tag lists them
        self.scratch: Path | None = None  # the training process's files for this run, removed at its end
        self.failure: str | None = None  # why recording failed: nothing but metrics is recorded after it

    def handle(self, message: Mapping[str, Any]) -> None:
        """Do what ``message`` asks. After a failure, metrics go to the fallback file and nothing else is
        tried (a store that failed once may hang on every call) until ``end`` (:meth:`close_failed`)."""
        op = message["op"]
        if self.failure is not None:
            if op == "metrics":
                self.keep(message["entries"])
            elif op == "end":
                self.close_failed()
            return
        try:
            getattr(self, op)(**{k: v for k, v in message.items() if k != "op"})
        except Exception as error:
            self.fail(error, message)
            if op == "end":  # the run is still open: one more try, as after any failure
                self.close_failed()

    def fail(self, error: Exception, message: Mapping[str, Any]) -> None:
        """Answer ``error`` in one line naming the store and the fallback file of the metrics it did not take."""
        if message["op"] == "metrics":
            self.keep(message["entries"])
        reason = (
            str(error)
            if isinstance(error, TrackingError)
            else f"cannot record the run in {self.uri}: {described(error)}"
        )
        if self.fallback is not None:
            reason += f"; the metrics it did not record are in {self.fallback}"
        self.failure = reason
        self.answers.send("error", message=reason)

    def close_failed(self) -> None:
        """Close the run as FAILED with the reason recording failed, if the store does so within :data:`CLOSE_WAIT`
        seconds; answer ``error`` again, saying whether it did (a run left RUNNING is for ``cleanup``)."""
        if self.run_id is None:  # it failed to start: there is no run
            return
        outcome: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # None: closed, else why not

        def close() -> None:
            try:
                self.end("FAILED", self.failure)
                outcome.put(None)
            except Exception as error:
                outcome.put(described(error))

        threading.Thread(target=close, daemon=True).start()  # left behind if the store hangs: the worker exits
        try:
            said = outcome.get(timeout=CLOSE_WAIT)
        except queue.Empty:
            said = f"the store did not answer within {CLOSE_WAIT:g} s"
        if said is None:
            became = f"the run {self.run_id} is recorded as FAILED"
        else:
            became = f"the run {self.run_id} is left RUNNING ({said}): `python -m framework cleanup` marks it FAILED"
        self.answers.send("error", message=f"{self.failure}; {became}")

    def keep(self, entries: Sequence[Sequence[Any]]) -> None:
        """Append metrics the store did not take to the fallback file, one JSON list per line."""
        if self.fallback is None or not entries:
            return
        self.fallback.parent.mkdir(parents=True, exist_ok=True)
        with self.fallback.open("a") as out:
            out.writelines(json.dumps(entry) + "\n" for entry in entries)

    # -- the messages ---------------------------------------------------------

    def start(
        self, uri: str, experiment: str, run: Mapping[str, Any], fallback: str | None = None, scratch: str | None = None
    ) -> None:
        """Create the run in ``uri`` with its params, config, overrides and tags; or reopen a resumed run."""
        self.uri, self.fallback = uri, Path(fallback) if fallback else None
        self.scratch = Path(scratch) if scratch else None
        client, experiment_id = connect(uri, experiment)
        database = sqlite_path(uri)
        if database is not None and schema_revision(database) == SQLITE_SCHEMA:
            self.fast_store = database
        if run["resume"]:
            client.update_run(run["resume"], status="RUNNING")
            client.set_tag(run["resume"], PROCESS_TAG, process_tag())  # this worker closes it now
            tags = client.get_run(run["resume"]).data.tags
            if "error" in tags:  # why it stopped before: no longer true
                client.delete_tag(run["resume"], "error")
            self.tables = json.loads(tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
            self.client, self.run_id = client, run["resume"]
        else:
            self.client = client
            self.run_id = client.create_run(
                experiment_id, tags=self.tags(run, experiment_id), run_name=run["name"]
            ).info.run_id
            self.log_params(run["config"])
            client.log_text(self.run_id, yaml.safe_dump(run["config"], sort_keys=False), "config.yaml")
            client.log_text(self.run_id, yaml.safe_dump(list(run["overrides"])), "overrides.yaml")
        self.answers.send("started", run_id=self.run_id, pid=os.getpid())

    def metrics(self, entries: Sequence[Sequence[Any]]) -> None:
        """Write (key, value, timestamp ms, step) metrics: straight into an embedded store of MLflow 3.17's
        schema (:func:`framework.tracking.tracker.write_metrics`), else through log_batch, at most 1000 a call."""
        if self.fast_store is not None:
            write_metrics(self.fast_store, self.run_id, entries)
            return
        from mlflow.entities import Metric

        for batch in chunks([Metric(*entry) for entry in entries], METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def text(self, data: str, path: str) -> None:
        self.client.log_text(self.run_id, data, path)

    def table(self, data: dict[str, list], path: str) -> None:
        log_table(self.client, self.run_id, data, path, self.tables)

    def artifact(self, file: str, folder: str, remove: bool = False) -> None:
        self.client.log_artifact(self.run_id, file, folder)
        if remove:  # a copy made for this message (a checkpoint)
            os.unlink(file)

    def model(self, files: str, register_as: str | None) -> None:
        from framework.tracking.models import log_model

        log_model(self.client, self.run_id, Path(files), register_as)

    def end(self, status: str, error: str | None) -> None:
        """Close the run with ``status`` (and the ``error`` that ended it)."""
        if self.run_id is None:
            return
        if error:
            self.client.set_tag(self.run_id, "error", error[:5000])
        self.client.set_terminated(self.run_id, status)

    # -- helpers ------------------------------------------------------------

    def tags(self, run: Mapping[str, Any], experiment_id: str) -> dict[str, str]:
        """The new run's tags: its command line, task, objective, commit, this worker's process and, in a
        sweep, its parent."""
        tags = {
            "command": shlex.join(["python", "-m", "framework", *run["overrides"]]),
            "framework.task": run["task"],
            OBJECTIVE_TAG: run["objective"],
            DIRECTION_TAG: "maximize" if run["maximize"] else "minimize",
            PROCESS_TAG: process_tag(),  # the process that closes the run; `cleanup` closes it if that is gone
        }
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        sweep_id = run["sweep_id"]
        if sweep_id:  # a job of a sweep: a child of the sweep's parent run
            tags[SWEEP_TAG] = sweep_id
            parent = sweep_parent(self.client, experiment_id, sweep_id)
            if parent is None:
                log.warning(
                    "sweep %s has no parent run in experiment %r; recording a top-level run",
                    sweep_id,
                    run["experiment"],
                )
            else:
                tags[PARENT_TAG] = parent
        return tags

    def log_params(self, config: Mapping[str, Any]) -> None:
        """The flattened config as the run's params, at most 100 a call."""
        from mlflow.entities import Param

        params = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in flatten(config).items()]
        for batch in chunks(params, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch, synchronous=True)


def read_messages(stream: IO[bytes], inbox: queue.SimpleQueue, started: threading.Event) -> None:
    """Queue every message of ``stream`` as it arrives (so the sender never blocks on a full pipe), then None.

    The input ends when the training process closes the connection, or when it is killed: then the
    connection may be reset (it had answers left unread) or end inside a message, which is dropped. Input
    that ends before any run started means the run never started: the worker exits at once.
    """
    with contextlib.suppress(ConnectionResetError):
        for line in stream:
            if not line.endswith(b"\n"):  # cut short
                break
            if not started.is_set():
                started.set()
            inbox.put(json.loads(line))
    if not started.is_set():
        os._exit(0)
    inbox.put(None)


def serve(inbox: queue.SimpleQueue, answers: Answers) -> None:
    """Handle messages until ``end``; input ending early closes the run as KILLED. Then remove the run's scratch
    folder, before answering ``ended``."""
    recorder = Recorder(answers)
    try:
        while True:
            message = inbox.get()
            if message is None:
                if recorder.run_id is not None:
                    recorder.handle(
                        {"op": "end", "status": "KILLED", "error": ABANDONED.format(run_id=recorder.run_id)}
                    )
                return
            recorder.handle(message)
            if message["op"] == "end":
                break
    finally:
        if recorder.scratch is not None:
            shutil.rmtree(recorder.scratch, ignore_errors=True)
    answers.send("ended")


def serve_connection(connection: socket.socket) -> None:
    """Record the run at the other end of ``connection``, in a worker forked by the recorder server: take the
    training process's working folder, environment and standard error from its first bytes (see
    :class:`framework.tracking.recorder_process.RecorderConnection`), then answer its messages on the connection."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    size, handed, _, _ = socket.recv_fds(connection, 4, 1)
    if len(size) < 4:
        return  # the training process went away before it said anything
    messages = connection.makefile("rb")
    hello = json.loads(messages.read(struct.unpack("!I", size)[0]))
    stderr = handed[0] if handed else os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):  # anything printed goes to the training process's standard error
        stream.flush()
        os.dup2(stderr, stream.fileno())
    os.close(stderr)
    os.chdir(hello["cwd"])
    os.environ.clear()
    os.environ.update(hello["env"])
    answers = Answers(connection.makefile("w"))
    logging.getLogger().handlers[:] = [answers]
    logging.getLogger().setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    logging.getLogger("framework.tracking.models").setLevel(logging.INFO)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    started = threading.Event()
    threading.Thread(target=read_messages, args=(messages, inbox, started), daemon=True).start()
    serve(inbox, answers)
