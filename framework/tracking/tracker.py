"""MLflow tracking: a plugin on the run-event hooks.

Where runs go: ``tracking.uri`` if set, else ``$MLFLOW_TRACKING_URI``, else an
embedded SQLite store ``sqlite:///<launch dir>/mlruns/mlflow.db`` with the
artifacts beside it in ``mlruns/artifacts/``, resolved to absolute paths from
the directory where the command was launched (never Hydra's output folder).

What a run records: the flattened config as params, the composed config and
the command-line overrides as YAML artifacts, the git commit and command line
as tags, ``loss`` (and the other per-step metrics) at every step, written in
batches, the evaluation metrics, sampled outputs as text artifacts, tables as JSON (MLflow's table view), figures as
PNGs (unless ``tracking.figures=false``), and the final status with the error that ended it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from framework.core.checkpoint import Checkpoint
from framework.core.checkpoint import load as load_checkpoint
from framework.core.errors import ConfigError, TrackingError, one_line
from framework.core.hookspecs import hookimpl
from framework.core.protocols import Evaluation, Predictor, RunInfo, Task
from framework.tracking.model_files import export
from framework.tracking.recorder_process import RecorderConnection, open_worker, plain

log = logging.getLogger(__name__)

STORE_DIR = "mlruns"
DATABASE = "mlflow.db"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limit on params per log_batch call
METRICS_PER_BATCH = 1000  # MLflow's limit on metrics per log_batch call
SQLITE_SCHEMA = "dc11669786a5"  # the schema revision of MLflow 3.17's SQL store, whose metric tables we write

FALLBACK = "unrecorded-metrics.jsonl"  # in the run's output folder: metrics the store did not take
CHECKPOINT = "checkpoints/last.npz"  # a run's last checkpoint, as an artifact
SWEEP_ENV = "FRAMEWORK_SWEEP_ID"  # set in every job of a sweep (see framework.tracking.sweep)
SWEEP_TAG = "framework.sweep_id"  # on a sweep's parent run and on each of its jobs' runs
ROLE_TAG = "framework.role"  # 'sweep' on a parent run
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests the run under its parent in the UI
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"  # MLflow's own: the run's tables, for the UI's table view
OBJECTIVE_TAG = "framework.objective"  # the metric a run returns to sweepers
DIRECTION_TAG = "framework.direction"  # minimize | maximize


T = TypeVar("T")


class RecordingContinues(KeyboardInterrupt):
    """Ctrl-C while the tracking worker, which has every message of the run, records its end; ``str()`` is one
    line saying so (the run is not KILLED: the worker closes it as it ended)."""


def resolve_uri(setting: str | None, launch_dir: Path) -> str:
    """The tracking URI: ``setting``, else $MLFLOW_TRACKING_URI, else the embedded store.

    A relative ``sqlite:///path`` is made absolute against ``launch_dir``.
    """
    uri = setting or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{launch_dir / STORE_DIR / DATABASE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(launch_dir / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:////abs/path`` URI, None for other stores."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:////") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise store creation across processes for an embedded SQLite store.

    Two processes creating the tables of a fresh SQLite file at once, or the
    same experiment at once, race; an exclusive lock on ``<db>.lock`` orders them.
    """
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        handle = open(database.with_suffix(".lock"), "w")  # noqa: SIM115 - held for the block
    except OSError as error:
        raise TrackingError(f"cannot create the tracking store {uri}: {error.strerror}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of an embedded store live beside its database: mlruns/artifacts/<experiment>."""
    database = sqlite_path(uri)
    if database is None:
        return None  # a server decides
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
    return (database.parent / "artifacts" / slug).as_uri()


def git_commit() -> str | None:
    """The commit of the framework's own checkout, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when the tracking server of an http(s) URI does not answer.

    MLflow's own client retries a dead server for minutes before it gives up.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise TrackingError(f"cannot reach the tracking server {uri}: {reason}") from None


def check_store(uri: str, wait: float = 5.0) -> None:
    """Fail fast, in one line naming the store, when ``uri`` cannot take a run: a server that does not
    answer, or an embedded store whose folder cannot be created or written, whose file is not an SQLite
    database, or that another process keeps locked for ``wait`` seconds.

    Done by the training process before its first step; the tracking worker opens the store later.
    """
    check_reachable(uri)
    database = sqlite_path(uri)
    if database is None:
        return
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(f"cannot create the tracking store {uri}: {error.strerror}: {database.parent}") from None
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=wait)) as db:
            db.execute("BEGIN IMMEDIATE")  # takes the write lock, as every write of a run will
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            db.rollback()
    except sqlite3.OperationalError as error:
        if "locked" in str(error):
            raise TrackingError(
                f"the tracking store {uri} is locked by another process (waited {wait:.0f} s)"
            ) from None
        raise TrackingError(f"cannot write to the tracking store {uri}: {error}") from None
    except sqlite3.DatabaseError as error:
        raise TrackingError(
            f"the tracking store {database} is not an SQLite database ({error}): move it away or set tracking.uri"
        ) from None


def connect(uri: str, experiment: str) -> tuple[Any, str]:
    """A client for ``uri`` and the id of ``experiment``, created if needed, safely under concurrency."""
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    check_reachable(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with store_lock(uri):
        try:
            client = MlflowClient(tracking_uri=uri)
            for _ in range(5):
                found = client.get_experiment_by_name(experiment)
                if found is not None:
                    if found.lifecycle_stage != "active":
                        raise TrackingError(
                            f"experiment {experiment!r} is deleted in {uri}: restore it "
                            "(mlflow experiments restore) or set tracking.experiment=<another name>"
                        )
                    return client, found.experiment_id
                try:
                    return client, client.create_experiment(experiment, artifact_location(uri, experiment))
                except MlflowException as error:  # another process created it first: read it back
                    if error.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
        except MlflowException as error:
            raise TrackingError(f"cannot use the tracking store {uri}: {one_line(error)}") from None
    raise TrackingError(f"cannot create experiment {experiment!r} in {uri}")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pages(search: Callable[..., Any]) -> Iterator[Any]:
    """Every result of an MLflow search, following its page tokens."""
    token = None
    while True:
        page = search(page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def schema_revision(database: Path) -> str | None:
    """The MLflow schema revision (alembic) of an embedded store, None if it cannot be read."""
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
            (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except (sqlite3.Error, TypeError, ValueError):
        return None
    return revision


def write_metrics(database: Path, run_id: str, entries: Sequence[tuple[str, float, int, int]]) -> None:
    """Insert (key, value, timestamp ms, step) metrics of a run into an embedded store, as MLflow's log_batch does.

    The rows MLflow's SQL store writes: every value into ``metrics`` (NaN as 0 with is_nan, +-inf as
    +-float max; an exact duplicate ignored), and per key into ``latest_metrics`` the one with the
    largest (step, timestamp, value). One executemany per table: about 1 us per value where
    log_batch takes about 70 us. Only for a store at :data:`SQLITE_SCHEMA`, MLflow 3.17's schema.
    """
    rows, latest = [], {}
    for key, value, timestamp, step in entries:
        is_nan = math.isnan(value)
        stored = 0.0 if is_nan else max(min(value, sys.float_info.max), -sys.float_info.max)
        row = (key, stored, timestamp, run_id, step, int(is_nan))
        rows.append(row)
        best = latest.get(key)
        if best is None or (step, timestamp, stored) > (best[4], best[2], best[1]):
            latest[key] = row
    with contextlib.closing(sqlite3.connect(database, timeout=60)) as db, db:
        db.executemany(
            "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp, "
            "step = excluded.step, is_nan = excluded.is_nan "
            "WHERE (excluded.step, excluded.timestamp, excluded.value) "
            "> (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)",
            list(latest.values()),
        )


def table_json(table: Mapping[str, Sequence[Any]]) -> str:
    """A table (column name -> values) as MLflow's ``log_table`` writes it: JSON ``{"columns": [...], "data":
    [row, ...]}`` (pandas' orient 'split'), a NaN or infinite number as null, floats at full precision (where
    ``log_table`` keeps 10 digits)."""
    lengths = {name: len(values) for name, values in table.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"a table's columns differ in length: {lengths}")

    def cell(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    rows = zip(*table.values(), strict=False)  # their lengths are checked above, with a better message
    return json.dumps({"columns": list(table), "data": [[cell(v) for v in row] for row in rows]}, default=plain)


def log_table(client: Any, run_id: str, table: Mapping[str, Sequence[Any]], path: str, listed: list) -> None:
    """Log ``table`` at ``path`` as MLflow's ``log_table`` does: its JSON file (:func:`table_json`), listed in the
    run's :data:`LOGGED_ARTIFACTS_TAG` so that the UI shows it as a table. ``listed`` is that tag's list so far,
    which this extends: ``log_table`` reads the whole run back and goes through pandas for each table (13 ms
    against about 2 here, on the embedded store), and a run evaluated often logs a table each time."""
    client.log_text(run_id, table_json(table), path)
    entry = {"path": path, "type": "table"}
    if entry not in listed:
        listed.append(entry)
        client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps(listed))


def sweep_parent(client: Any, experiment_id: str, sweep_id: str) -> str | None:
    """The id of the parent run that sweep ``sweep_id`` opened in this experiment, if any."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_id}' and tags.`{ROLE_TAG}` = 'sweep'",
        max_results=1,
    )
    return found[0].info.run_id if found else None


def fetch_run(setting: str | None, launch_dir: Path, run_id: str, into: Path) -> tuple[dict[str, Any], Path]:
    """The config of tracked run ``run_id`` and its last checkpoint, downloaded into ``into``."""
    from mlflow.exceptions import MlflowException

    uri = resolve_uri(setting, launch_dir)
    check_reachable(uri)
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise TrackingError(f"resume={run_id}: there is no tracking store at {database}")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # two small files
    try:
        found = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"resume={run_id}: no such run in {uri}") from None
    if found.info.status == "FINISHED":
        raise TrackingError(f"resume={run_id}: the run FINISHED; there is nothing to resume")
    try:
        config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", str(into))).read_text())
        path = Path(client.download_artifacts(run_id, CHECKPOINT, str(into)))
    except (MlflowException, OSError):
        raise TrackingError(
            f"resume={run_id}: the run has no {CHECKPOINT} to resume from (set train.checkpoint_every to save them)"
        ) from None
    return config, path


def resumable(
    config: dict[str, Any], overrides: Sequence[str], launch_dir: Path, into: Path
) -> tuple[dict[str, Any], tuple[Checkpoint, str]]:
    """The config and last checkpoint of the run named by ``resume``, fetched from its tracking store."""
    run_id = config["resume"]
    extra = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "tracking.uri")]
    if extra:
        accepted = f"a run id given alone: the run continues with its own config (remove {' '.join(extra)})"
        raise ConfigError("resume", run_id, accepted)
    if not config["tracking"]["enabled"]:
        raise ConfigError("tracking.enabled", False, "true with resume=<run id>: the run is in the tracking store")
    original, path = fetch_run(config["tracking"]["uri"], launch_dir, run_id, into)
    original["resume"] = run_id
    original["tracking"]["uri"] = config["tracking"]["uri"]
    return original, (load_checkpoint(path), f"of run {run_id}")


class MlflowTracker:
    """Records each run in MLflow through a tracking worker process: the training process never imports MLflow.

    The worker (:mod:`framework.tracking.recorder`), forked for the run by the recorder server that keeps MLflow
    loaded (:mod:`framework.tracking.recorder_server`), opens the store and records while training runs; every
    event becomes a message to it. Metrics are buffered and sent ``tracking.flush_every`` values at a
    time; figures are rendered to PNG files and sent by name; the trained network is exported to files
    (:mod:`framework.tracking.model_files`) that the worker logs as the run's model; these files wait in a scratch
    folder that the worker removes when it is done with the run. At the end of the run the tracker waits
    for the worker to record everything; Ctrl-C then stops the wait, not the recording
    (:class:`RecordingContinues`).
    """

    def __init__(self) -> None:
        self.worker: RecorderConnection | None = None
        self.buffer: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        self.flush_every = 1000
        self.figures = True  # tracking.figures: draw the evaluations' figures
        self.scratch: Path | None = None  # figures and model files until the worker, which removes it, logs them

    # -- run events ---------------------------------------------------------

    @hookimpl
    def framework_run_started(self, run: RunInfo) -> None:
        settings = run.config["tracking"]
        if not settings["enabled"]:
            return
        self.flush_every, self.figures = settings["flush_every"], settings["figures"]
        uri = resolve_uri(settings["uri"], run.launch_dir)
        check_store(uri)
        fallback = (run.output_dir or run.launch_dir) / FALLBACK
        self.worker = open_worker()
        self.scratch = Path(tempfile.mkdtemp(prefix="framework-tracking-"))
        self.worker.send(
            "start",
            uri=uri,
            experiment=run.experiment,
            fallback=str(fallback),
            scratch=str(self.scratch),
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
            },
        )
        log.info("Recording the run in experiment %r at %s", run.experiment, uri)

    @hookimpl
    def framework_metrics(self, run: RunInfo, step: int, metrics: Mapping[str, float]) -> None:
        if self.worker is None:
            return
        now = int(time.time() * 1000)
        self.buffer.extend((key, float(value), now, step) for key, value in metrics.items())
        if len(self.buffer) >= self.flush_every:
            self.flush()

    @hookimpl
    def framework_evaluation(self, run: RunInfo, step: int, evaluation: Evaluation, final: bool) -> None:
        if self.worker is None:
            return
        self.framework_metrics(run=run, step=step, metrics=evaluation.metrics)
        self.flush()
        folder = "" if final else f"step_{step:07d}/"
        for name, text in evaluation.samples.items():
            self.worker.send("text", data=text, path=f"samples/{folder}{name}.txt")
        for name, table in evaluation.tables.items():
            self.worker.send("table", data=table, path=f"tables/{folder}{name}.json")
        for name, figure in evaluation.drawn_figures() if self.figures else ():
            path = self.scratch / "figures" / folder / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path)
            self.worker.send("artifact", file=str(path), folder=str(Path("figures", folder)))

    @hookimpl
    def framework_checkpoint(self, run: RunInfo, step: int, path: Path) -> None:
        if self.worker is None:
            return
        self.flush()  # the metrics up to the checkpoint are stored with it
        # the worker may read it after the next checkpoint has replaced ``path`` (and after this process was killed
        # before sending the metrics up to that one): it gets this one, in a file of its own, which it removes
        kept = self.scratch / "checkpoints" / f"step_{step:07d}" / path.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, kept)  # the checkpoint is written anew each time (checkpoint.save renames a new file)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(path, kept)
        self.worker.send("artifact", file=str(kept), folder=str(Path(CHECKPOINT).parent), remove=True)

    @hookimpl
    def framework_trained(self, run: RunInfo, task: Task, step: int) -> None:
        settings = run.config["model"]
        if self.worker is None or not settings["log"]:
            return
        if not isinstance(task, Predictor):
            log.info("task %s cannot predict: no model logged", run.task)
            return
        files = export(task, run.config, self.scratch / "model")
        self.worker.send(
            "model", files=str(files), register_as=(settings["name"] or run.task) if settings["register"] else None
        )

    @hookimpl
    def framework_run_ended(self, run: RunInfo, status: str, error: str | None) -> None:
        worker, self.worker, self.scratch = self.worker, None, None  # the worker removes the scratch folder
        if worker is None:
            return
        self.send_metrics(worker)  # a worker that failed keeps them in the fallback file
        worker.send("end", status=status, error=error)
        try:
            worker.close()
        except KeyboardInterrupt:
            if worker.delivered:  # the worker records the rest and the run's end
                raise RecordingContinues(worker.left_recording(status)) from None
            raise
        if worker.run_id is not None:
            run.links["mlflow_run_id"] = worker.run_id
        if worker.failure != worker.reported:  # a failure, or what became of the run after one, said since
            worker.check()

    # -- helpers ------------------------------------------------------------

    def flush(self) -> None:
        """Send the buffered metrics to the worker; raise if recording failed."""
        self.send_metrics(self.worker)
        self.worker.check()

    def send_metrics(self, worker: RecorderConnection) -> None:
        """Send the buffered (key, value, timestamp, step) metrics to ``worker``."""
        buffer, self.buffer = self.buffer, []
        if buffer:
            worker.send("metrics", entries=buffer)


tracker = MlflowTracker()  # the plugin object (see plugins.DEFAULT_PLUGINS)
