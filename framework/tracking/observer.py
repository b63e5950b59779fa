"""MLflow tracking: a plugin on the run-event hooks (``framework_run_started`` ... ``framework_run_ended``).

What a run records: the flattened config as params, the composed config and the command-line overrides as
YAML artifacts, the command line, task, objective and git commit as tags, the per-step metrics every
``tracking.log_every`` steps (sent at least every 5 s; the whole history is in the run's checkpoint), every
evaluation's metrics, sampled outputs as text, tables (MLflow's table view) and figures as PNGs (unless
``tracking.figures=false``), the checkpoints, the trained network as the MLflow model ``model``, and the final
status with the error that ended it.

The training process never imports MLflow: every event becomes a message to the recording process
(:mod:`framework.tracking.recorder`), which writes to the store while training goes on. At the end the run
waits for it, at most ``tracking.timeout`` seconds; a recording that failed, or did not finish in time, fails
the run in one line that says what was not recorded and where it is: the metrics the store did not take go
to ``unrecorded-metrics.jsonl`` in the run's folder, a file reserved when the run starts, so that it can be
written whole even on a full disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.core.errors import TrackingError
from framework.core.hookspecs import hookimpl
from framework.core.protocols import Evaluation, Predictor, RunInfo, Task
from framework.tracking.cleanup import process_tag
from framework.tracking.connection import RecordingProcess, close_abandoned, forget, plain, recording_process
from framework.tracking.model_files import export
from framework.tracking.resume import CHECKPOINT
from framework.tracking.store import (
    METRICS_PER_BATCH,
    SWEEP_ENV,
    VERDICT_TAG,
    check_store,
    log_where_to_look,
    resolve_uri,
)

log = logging.getLogger("framework.tracking")

FALLBACK = "unrecorded-metrics.jsonl"  # in the run's output folder: the metrics the store did not take
ENTRY_BYTES = 64  # room reserved per metric value in the fallback file (a JSON line [key, value, ms, step]), and
# its key's length
RESERVED_KEYS = 8  # metrics per logged step and per evaluation the fallback file is reserved for, until they are known
RESERVE_LIMIT = 64 * 2**20  # bytes at most reserved for the fallback file (about 900,000 metric values)
NOTICE_AFTER = 3.0  # seconds a run waits for its recording at its end before it says what it is waiting for
CLOSE_WAIT = 10.0  # seconds given to a new recording process to close a run the stuck one left open
SEND_EVERY = 5.0  # seconds: buffered metrics go to the recording process at least this often (and by the 1000);
# each message is a transaction of the store (40-80 ms of the recording process with SQLite), so a short run sends
# its metrics once, at its end, where one message per evaluation was a recorder's largest cost after MLflow's imports


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C ignored for the block (in the main thread, the only one that can own signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Fallback:
    """The file that takes the metrics the store did not: reserved (allocated) for every metric the run will log
    when it starts, and again once its first step and evaluation tell their metrics, so that writing it needs no
    more disk, even when the disk is full by then; removed when everything was recorded.

    The room is at most :data:`RESERVE_LIMIT`: a run of 10^8 steps logged at every step would otherwise take tens
    of gigabytes of disk before its first step. Beyond that many unrecorded values the file grows as it is written.
    """

    def __init__(self, path: Path, run: RunInfo) -> None:
        self.path, self.size = path, 0
        settings, train = run.config["tracking"], run.config["train"]
        self.logged_steps = run.steps // settings["log_every"] + 2  # and the last, and a step before a stop
        self.evaluations = (run.steps // train["eval_every"] if train["eval_every"] else 0) + 1
        self.step_bytes = self.evaluation_bytes = RESERVED_KEYS * (ENTRY_BYTES + 16)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.reserve()

    def known(self, metrics: Mapping[str, float], evaluation: bool) -> None:
        """Reserve room for these metrics at every logged step (or evaluation), now that they are known."""
        size = sum(ENTRY_BYTES + len(key) for key in metrics)
        if evaluation:
            self.evaluation_bytes = max(self.evaluation_bytes, size)
        else:
            self.step_bytes = max(self.step_bytes, size)
        self.reserve()

    def reserve(self) -> None:
        """Allocate the file's room for every metric of the run, at most :data:`RESERVE_LIMIT` (it only grows)."""
        size = min(self.logged_steps * self.step_bytes + self.evaluations * self.evaluation_bytes, RESERVE_LIMIT)
        if size <= self.size:
            return
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(descriptor, 0, size)
            finally:
                os.close(descriptor)
        except OSError as error:
            raise TrackingError(
                f"cannot reserve {size} bytes for {self.path}, where the metrics the store does not take would go: "
                f"{error.strerror}"
            ) from None
        self.size = size

    def write(self, entries: list[list[Any]]) -> None:
        """The entries as JSON lines over the reserved space, the file cut to their length."""
        data = "".join(json.dumps(entry, default=plain) + "\n" for entry in entries).encode()
        with self.path.open("r+b") as out:
            out.write(data)
            out.truncate(len(data))
            out.flush()
            os.fsync(out.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class Recording:
    """One run's recording: its process, what it has sent and what the store has confirmed."""

    process: RecordingProcess
    uri: str
    log_every: int
    figures: bool
    timeout: float
    fallback: Fallback
    scratch: Path  # figures, checkpoints and model files until they are logged
    token: int  # the process's number for this run
    buffer: list[list[Any]] = field(default_factory=list)  # [key, value, ms, step] not yet sent
    sent_at: float = field(default_factory=time.monotonic)  # when metrics were last sent (or the run started)
    pending: dict[int, list[list[Any]]] = field(default_factory=dict)  # seq -> metrics sent, not yet confirmed
    unlogged: tuple[int, Mapping[str, float]] | None = None  # the last step's metrics if not logged: sent at the end

    @property
    def run_id(self) -> str | None:
        """The run's id, once the process has created it."""
        return self.process.started.get(self.token)

    def ended(self) -> bool:
        """Whether the process has closed the run."""
        return self.token in self.process.ended

    def failure(self) -> str | None:
        """Why recording this run failed, if it did: the last error answered, or the process gone."""
        failures = self.process.failures.get(self.token)
        if failures:
            return failures[-1]
        if self.process.gone:
            return f"the recording process (pid {self.process.pid}) exited (code {self.process.process.poll()})"
        return None

    def unconfirmed(self) -> list[list[Any]]:
        """Every metric value not yet confirmed by the store, in order."""
        stored = self.process.stored
        return [entry for seq, entries in sorted(self.pending.items()) if seq > stored for entry in entries] + list(
            self.buffer
        )


class MlflowTracker:
    """Records each run in MLflow through this process's recording process (see the module docstring)."""

    def __init__(self) -> None:
        self.recording: Recording | None = None

    # -- run events ---------------------------------------------------------

    @hookimpl
    def framework_run_started(self, run: RunInfo) -> None:
        settings = run.config["tracking"]
        self.recording = None
        if not settings["enabled"]:
            return
        uri = resolve_uri(settings["uri"], run.launch_dir)
        check_store(uri)
        fallback = Fallback((run.output_dir or run.launch_dir) / FALLBACK, run)
        process = recording_process()
        self.recording = Recording(
            process=process,
            uri=uri,
            log_every=settings["log_every"],
            figures=settings["figures"],
            timeout=settings["timeout"],
            fallback=fallback,
            scratch=Path(tempfile.mkdtemp(prefix="framework-recording-")),
            token=process.next_token(),
        )
        process.send(
            "start",
            token=self.recording.token,
            uri=uri,
            experiment=run.experiment,
            scratch=str(self.recording.scratch),
            run={
                "task": run.task,
                "experiment": run.experiment,
                "name": run.run_name,
                "config": run.config,
                "overrides": list(run.overrides),
                "objective": run.objective,
                "maximize": run.maximize,
                "resume": run.resume,
                "sweep_id": os.environ.get(SWEEP_ENV),
                "process": process_tag(),
            },
        )
        log.info("Recording the run in experiment %r at %s", run.experiment, uri)

    @hookimpl
    def framework_metrics_block(self, run: RunInfo, block: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        recording = self.recording
        if recording is None:
            return
        for step, metrics in block:
            if step % recording.log_every and step != run.steps - 1:
                recording.unlogged = (step, metrics)
                continue
            recording.unlogged = None
            recording.fallback.known(metrics, evaluation=False)  # room for this many at every logged step
            self.buffer(recording, step, metrics)
        if self.due(recording):
            self.flush()

    @hookimpl
    def framework_evaluation(self, run: RunInfo, step: int, evaluation: Evaluation, final: bool) -> None:
        recording = self.recording
        if recording is None:
            return
        recording.fallback.known(evaluation.metrics, evaluation=True)
        self.buffer(recording, step, evaluation.metrics)
        if self.due(recording):
            self.flush()
        else:
            self.check(recording)
        folder = "" if final else f"step_{step:07d}/"
        for name, text in evaluation.samples.items():
            recording.process.send("text", data=text, path=f"samples/{folder}{name}.txt")
        for name, table in evaluation.tables.items():
            recording.process.send("table", data=table, path=f"tables/{folder}{name}.json")
        for name, figure in evaluation.drawn_figures() if recording.figures else ():
            path = recording.scratch / "figures" / folder / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path)
            recording.process.send("artifact", file=str(path), folder=str(Path("figures", folder)))

    @hookimpl
    def framework_checkpoint(self, run: RunInfo, step: int, path: Path) -> None:
        recording = self.recording
        if recording is None:
            return
        self.flush()  # the metrics up to the checkpoint are stored with it
        # the recorder may read it after the next checkpoint has replaced ``path``: it gets this one, in a file of
        # its own (a link: the checkpoint is written anew each time, and renamed into place)
        kept = recording.scratch / "checkpoints" / f"step_{step:07d}" / path.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, kept)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(path, kept)
        recording.process.send("artifact", file=str(kept), folder=str(Path(CHECKPOINT).parent))

    @hookimpl
    def framework_trained(self, run: RunInfo, task: Task, step: int) -> None:
        settings, recording = run.config["model"], self.recording
        if recording is None or not settings["log"]:
            return
        if not isinstance(task, Predictor):
            log.info("task %s cannot predict: no model logged", run.task)
            return
        files = export(task, run.config, run.data_files, recording.scratch / "model")
        register_as = (settings["name"] or run.task) if settings["register"] else None
        recording.process.send("model", files=str(files), register_as=register_as)

    @hookimpl(tryfirst=True)  # before any other observer, which may raise
    def framework_run_ended(self, run: RunInfo, status: str, error: str | None) -> None:
        recording, self.recording = self.recording, None
        if recording is None:
            return
        try:
            if run.verdict is not None:  # the run's verdict, in its summary and a sweep's
                recording.process.send("tags", tags={VERDICT_TAG: run.verdict.status})
            if recording.unlogged is not None:  # the last step before a run stopped early is always logged
                self.buffer(recording, *recording.unlogged)
            self.send_metrics(recording)
            recording.process.send("end", status=status, error=error)
            run_id = self.wait_for_the_end(recording)
            if run_id is not None:
                experiment_id = recording.process.experiments[recording.token]
                run.links.update(mlflow_run_id=run_id, mlflow_experiment_id=experiment_id, mlflow_uri=recording.uri)
                if status != "FINISHED":  # a finished run's command says this after its verdict
                    log_where_to_look(run, status)
        finally:
            shutil.rmtree(recording.scratch, ignore_errors=True)

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def buffer(recording: Recording, step: int, metrics: Mapping[str, float]) -> None:
        """Keep the metrics of ``step`` for the next message, as [key, value, ms, step]."""
        now = int(time.time() * 1000)
        recording.buffer.extend([key, float(value), now, step] for key, value in metrics.items())

    @staticmethod
    def due(recording: Recording) -> bool:
        """Whether the buffered metrics are to be sent now: :data:`METRICS_PER_BATCH` of them, or :data:`SEND_EVERY`
        seconds since the last message."""
        return len(recording.buffer) >= METRICS_PER_BATCH or time.monotonic() - recording.sent_at >= SEND_EVERY

    def flush(self) -> None:
        """Send the buffered metrics; raise if recording failed, so that the run stops (its end says the rest)."""
        recording = self.recording
        self.send_metrics(recording)
        self.check(recording)

    @staticmethod
    def check(recording: Recording) -> None:
        """Raise :class:`TrackingError` if recording failed, so that the run stops (its end says the rest)."""
        failure = recording.failure()
        if failure is not None:
            raise TrackingError(failure)

    def send_metrics(self, recording: Recording) -> None:
        """Send the buffered [key, value, ms, step] entries, keeping them until the store confirms them; the fallback
        file grows with them, so that they always fit in it."""
        if not recording.buffer:
            return
        entries, recording.buffer = recording.buffer, []
        recording.sent_at = time.monotonic()
        seq = recording.process.next_seq()
        recording.pending[seq] = entries
        for done in [done for done in recording.pending if done <= recording.process.stored]:
            del recording.pending[done]
        recording.process.send("metrics", seq=seq, entries=entries)

    def wait_for_the_end(self, recording: Recording) -> str | None:
        """Wait until the recording process has closed the run, as long as it makes progress: at most
        ``tracking.timeout`` seconds without a word from it (a busy machine slows it; a stopped or stuck one is
        silent); the run's id.

        Raises :class:`TrackingError` in one line when recording failed or the process fell silent; the metrics the
        store did not take are then in the fallback file. Ctrl-C during the wait stops waiting: the run is closed
        by another recording process, or left for ``cleanup``.
        """
        process, ended = recording.process, recording.ended
        waiting_since = time.monotonic()
        try:
            if not process.wait_for(ended, NOTICE_AFTER):
                log.info(  # a first run waits for MLflow to load and the store to be made: nothing wrong
                    "still recording the run %s: waiting for the recording process (pid %d), while it answers "
                    "within %g s (tracking.timeout)",
                    recording.run_id or "(not yet created in the store)",
                    process.pid,
                    recording.timeout,
                )
                while not process.wait_for(ended, 1.0) and not process.gone:
                    if time.monotonic() - max(process.heard, waiting_since) > recording.timeout:
                        break
        except KeyboardInterrupt:
            with uninterrupted():  # closing the run takes a moment: not cut short again
                self.abandon(recording, "KILLED", "interrupted (SIGINT) while its recording finished")
            raise
        failure = recording.failure()
        if ended() and failure is None:
            recording.fallback.remove()
            return recording.run_id
        if failure is None:
            failure = (
                f"the recording process (pid {process.pid}) did not finish recording the run: it did not answer for "
                f"{recording.timeout:g} s (tracking.timeout)"
            )
            failure += "; " + self.abandon(recording, "FAILED", failure)
        unconfirmed = recording.unconfirmed()
        if not unconfirmed:
            recording.fallback.remove()
            raise TrackingError(f"{failure}; every metric was recorded")
        recording.fallback.write(unconfirmed)
        raise TrackingError(f"{failure}; the metrics it did not record are in {recording.fallback.path}")

    def abandon(self, recording: Recording, status: str, reason: str) -> str:
        """Stop a recording process that has not finished, and close its run with a new one; what became of it."""
        run_id = None if recording.ended() else recording.run_id
        forget(recording.process)
        if run_id is None:
            return "the run was not created in the store"
        said = close_abandoned(recording.uri, run_id, status, reason, CLOSE_WAIT)
        if said is None:
            return f"the run {run_id} is recorded as {status}"
        return f"the run {run_id} is left RUNNING ({said}): `python -m framework cleanup` marks it FAILED"


tracker = MlflowTracker()  # the plugin object (see framework.cli.plugins)
