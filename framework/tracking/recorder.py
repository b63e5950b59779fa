"""The recording process: a child of the command that writes its runs to MLflow, one after another.

``python -m framework.tracking.recorder`` is started by the first tracked run of a process
(:mod:`framework.tracking.connection`; ``python -m framework`` starts it before anything else, so that
MLflow, 1.6-1.8 s of imports, loads on the second core while the command composes its config and trains).
It reads one JSON object per line on its standard input and answers, one per line, on its standard output:

========================================  ==============================================
message (``op`` and fields)               what the recorder does
========================================  ==============================================
``start``: token, uri, experiment, run    creates the run (params, config, overrides, tags),
scratch                                   or reopens ``run.resume``; answers ``started``
``metrics``: seq, entries [key, value,    ``log_batch``; answers ``stored`` (seq)
ms, step]
``text`` / ``table``: data, path          logs a text or a table artifact
``artifact``: file, folder                logs a file (a figure, a checkpoint)
``model``: files, register_as             logs the exported network as the model ``model``
``tags``: tags                            sets tags of the run
``end``: status, error                    closes the run; answers ``ended``
``close``: token, uri, run_id, status,    closes a run another recorder left open; answers
error                                     ``ended``
========================================  ==============================================

Answers: ``started`` (run_id), ``stored`` (seq), ``error`` (message: one line naming the store),
``ended`` (run_id), each with the token of the run's ``start``; ``ready`` once MLflow is loaded; and
``log`` (level, message: its log lines, which the training process logs). Each tells the training
process it is making progress: it is waited for as long as it answers.

When recording fails, it answers ``error`` and tries nothing else for that run until ``end``: then it
tries once, for at most :data:`CLOSE_WAIT` seconds (a store that failed may hang), to close the run as
FAILED with the reason, and answers ``error`` again saying what became of the run, then ``ended``. The
training process keeps every metric the store has not confirmed, for its fallback file.

It ends with its input: when the training process closes it, or dies (then a run still open is closed as
KILLED, and ``resume=<run id>`` continues it from its last checkpoint) and its scratch folder (the files the
training process left for it) removed. So it never outlives its command.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from framework.core.config import flatten
from framework.core.errors import TrackingError, described
from framework.tracking.cleanup import PROCESS_TAG
from framework.tracking.store import (
    DIRECTION_TAG,
    MAX_PARAM_LENGTH,
    METRICS_PER_BATCH,
    OBJECTIVE_TAG,
    PARAMS_PER_BATCH,
    PARENT_TAG,
    SWEEP_TAG,
    TASK_TAG,
    chunks,
    connect,
    quiet_mlflow,
    sweep_parent,
)

log = logging.getLogger("framework.tracking.recorder")

ABANDONED = "the training process ended without closing the run (killed?); resume={run_id} continues it"
CLOSE_WAIT = 10.0  # seconds given to a store that failed, to close the run as FAILED


class Answers(logging.Handler):
    """The answers to the training process, one JSON object per line; log records become ``log``."""

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
            except OSError:  # the training process was killed: the run is still closed
                self.stream = None

    def emit(self, record: logging.LogRecord) -> None:
        self.send("log", level=record.levelno, message=record.getMessage())


def git_commit() -> str | None:
    """The commit of the framework's own checkout, if it is one."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


class Recorder:
    """The runs of one training process in MLflow, driven by its messages, one run at a time."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.client: Any = None
        self.uri = ""
        self.run_id: str | None = None
        self.token = 0  # the training process's number for the run (the ``start`` it sent)
        self.scratch: Path | None = None  # the run's files in the training process's scratch folder
        self.failure: str | None = None  # why recording failed: nothing is tried for this run until ``end``

    def answer(self, op: str, **fields: Any) -> None:
        """Answer ``op`` about the current run."""
        self.answers.send(op, token=self.token, **fields)

    def handle(self, message: Mapping[str, Any]) -> None:
        """Do what ``message`` asks; after a failure only ``end`` (:meth:`close_failed`)."""
        op = message["op"]
        if self.failure is not None:
            if op in ("end", "start"):
                self.close_failed()
            if op != "start":
                return
        try:
            getattr(self, op)(**{k: v for k, v in message.items() if k != "op"})
        except Exception as error:
            reason = (
                str(error)
                if isinstance(error, TrackingError)
                else f"cannot record the run in {self.uri}: {described(error)}"
            )
            self.failure = reason
            self.answer("error", message=reason)
            if op == "end":  # the run is still open: one more try, as after any failure
                self.close_failed()

    def close_failed(self) -> None:
        """Close the run as FAILED with the reason recording failed, if the store does so within :data:`CLOSE_WAIT`
        seconds; answer ``error`` again, saying whether it did (a run left RUNNING is for ``cleanup``), then
        ``ended``."""
        run_id, reason = self.run_id, self.failure
        self.run_id, self.failure = None, None
        if run_id is None:  # it failed to start: there is no run
            self.answer("error", message=f"{reason}; the run was not created")
            self.answer("ended", run_id=None)
            return
        outcome: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # None: closed, else why not

        def close() -> None:
            try:
                self.client.set_tag(run_id, "error", reason[:5000])
                self.client.set_terminated(run_id, "FAILED")
                outcome.put(None)
            except Exception as error:
                outcome.put(described(error))

        threading.Thread(target=close, daemon=True).start()  # left behind if the store hangs: the process exits
        try:
            said = outcome.get(timeout=CLOSE_WAIT)
        except queue.Empty:
            said = f"the store did not answer within {CLOSE_WAIT:g} s"
        if said is None:
            became = f"the run {run_id} is recorded as FAILED"
        else:
            became = f"the run {run_id} is left RUNNING ({said}): `python -m framework cleanup` marks it FAILED"
        self.answer("error", message=f"{reason}; {became}")
        self.answer("ended", run_id=run_id)

    # -- the messages ---------------------------------------------------------

    def start(self, token: int, uri: str, experiment: str, run: Mapping[str, Any], scratch: str) -> None:
        """Create the run in ``uri`` with its params, config, overrides and tags; or reopen a resumed run."""
        self.token, self.uri, self.scratch = token, uri, Path(scratch)
        self.client, experiment_id = connect(uri, experiment)
        if run["resume"]:
            self.run_id = run["resume"]
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, PROCESS_TAG, run["process"])
            if "error" in self.client.get_run(self.run_id).data.tags:  # why it stopped before: no longer true
                self.client.delete_tag(self.run_id, "error")
        else:
            tags = self.run_tags(run, experiment_id)
            self.run_id = self.client.create_run(experiment_id, tags=tags, run_name=run["name"]).info.run_id
            self.log_params(run["config"])
            self.client.log_text(self.run_id, yaml.safe_dump(run["config"], sort_keys=False), "config.yaml")
            self.client.log_text(self.run_id, yaml.safe_dump(list(run["overrides"])), "overrides.yaml")
        self.answer("started", run_id=self.run_id, experiment_id=experiment_id)

    def metrics(self, seq: int, entries: Sequence[Sequence[Any]]) -> None:
        """(key, value, timestamp ms, step) metrics through ``log_batch``, at most 1000 a call."""
        from mlflow.entities import Metric

        for batch in chunks([Metric(*entry) for entry in entries], METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
        self.answer("stored", seq=seq)

    def text(self, data: str, path: str) -> None:
        self.client.log_text(self.run_id, data, path)

    def table(self, data: dict[str, list], path: str) -> None:
        self.client.log_table(self.run_id, data, path)

    def artifact(self, file: str, folder: str) -> None:
        self.client.log_artifact(self.run_id, file, folder)

    def tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def model(self, files: str, register_as: str | None) -> None:
        from framework.tracking.models import log_model

        log_model(self.client, self.run_id, Path(files), register_as)

    def end(self, status: str, error: str | None) -> None:
        """Close the run with ``status`` (and the ``error`` that ended it)."""
        run_id, self.run_id = self.run_id, None
        if error:
            self.client.set_tag(run_id, "error", error[:5000])
        self.client.set_terminated(run_id, status)
        self.answer("ended", run_id=run_id)

    def close(self, token: int, uri: str, run_id: str, status: str, error: str) -> None:
        """Close run ``run_id`` of ``uri``, left open by a recorder that stopped answering."""
        from mlflow import MlflowClient

        self.token, self.uri, self.client, self.run_id = token, uri, MlflowClient(tracking_uri=uri), run_id
        self.end(status, error)

    # -- helpers ------------------------------------------------------------

    def run_tags(self, run: Mapping[str, Any], experiment_id: str) -> dict[str, str]:
        """The new run's tags: its command line, task, objective, commit, process and, in a sweep, its parent."""
        tags = {
            "command": shlex.join(["python", "-m", "framework", *run["overrides"]]),
            TASK_TAG: run["task"],
            OBJECTIVE_TAG: run["objective"],
            DIRECTION_TAG: "maximize" if run["maximize"] else "minimize",
            PROCESS_TAG: run["process"],  # the training process; `cleanup` closes the run if it is gone
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
                    "sweep %s has no parent run in experiment %s; recording a top-level run",
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


def serve(messages: IO[str], answers: Answers) -> None:
    """Handle every message until the input ends. A run still open then (the training process died) is closed as
    KILLED, or FAILED if recording had failed; the process exits at most :data:`CLOSE_WAIT` seconds later."""
    recorder = Recorder(answers)
    for line in messages:
        if not line.endswith("\n"):  # cut short: the training process died while writing it
            break
        recorder.handle(json.loads(line))
    threading.Timer(2 * CLOSE_WAIT, os._exit, args=(1,)).start()  # a store that hangs does not keep it alive
    if recorder.failure is not None:
        recorder.close_failed()
    elif recorder.run_id is not None:
        recorder.handle({"op": "end", "status": "KILLED", "error": ABANDONED.format(run_id=recorder.run_id)})
    if recorder.scratch is not None:  # the training process may be gone: nobody else would remove it
        shutil.rmtree(recorder.scratch, ignore_errors=True)
    os._exit(0)  # MLflow's threads and objects need no collecting


def main() -> None:
    """Answer on the standard output as it was; anything else printed goes to the standard error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    answers = Answers(os.fdopen(os.dup(sys.stdout.fileno()), "w"))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.getLogger().handlers[:] = [answers]
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("framework.tracking.recorder", "framework.tracking.models"):
        logging.getLogger(name).setLevel(logging.INFO)
    quiet_mlflow()
    import mlflow  # noqa: F401 - now, while the training process starts: not at its first message

    answers.send("ready")
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
