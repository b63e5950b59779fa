"""Where runs are recorded, checked before a run trains, and MLflow's client for it.

The store: ``tracking.uri`` if set, else ``$MLFLOW_TRACKING_URI``, else the embedded SQLite store
``sqlite:///<launch dir>/mlruns/mlflow.db`` with its artifacts beside it in ``mlruns/artifacts/``,
resolved to absolute paths from the directory where the command was launched (never Hydra's output
folder). Everything here goes through MLflow's public client; nothing reads or writes its tables.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from framework.core.errors import ConfigError, TrackingError, one_line

STORE_DIR = "mlruns"
DATABASE = "mlflow.db"
SQLITE_MAGIC = b"SQLite format 3\0"  # the first 16 bytes of every SQLite database file
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limit on params per log_batch call
METRICS_PER_BATCH = 1000  # MLflow's limit on metrics per log_batch call
CHECK_TIMEOUT = 5.0  # seconds a tracking server has to answer the check before a run
HTTP_TIMEOUT, HTTP_RETRIES = 20, 2  # seconds per request to a tracking server, and retries (MLflow's: 120 s, 7)

# the tags the framework sets, and MLflow's own that it sets
TASK_TAG = "framework.task"
SWEEP_ENV = "FRAMEWORK_SWEEP_ID"  # set in every job of a sweep (see framework.tracking.sweep)
SWEEP_TAG = "framework.sweep_id"  # on a sweep's parent run and on each of its jobs' runs
ROLE_TAG = "framework.role"  # 'sweep' on a parent run
OBJECTIVE_TAG = "framework.objective"  # the metric a run returns to sweepers
DIRECTION_TAG = "framework.direction"  # minimize | maximize
VERDICT_TAG = "framework.verdict"  # reached | not reached | no reference: whether it reached the task's result
UI_PORT = 5000  # where `mlflow ui` listens by default
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests the run under its parent in the UI
# MLflow 3's UI opens an experiment on its runs (not on the GenAI overview) when it has this tag
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"

T = TypeVar("T")


def resolve_uri(setting: str | None, launch_dir: Path) -> str:
    """The tracking URI: ``setting``, else $MLFLOW_TRACKING_URI, else the embedded store.

    A relative ``sqlite:///path`` is made absolute against ``launch_dir``. An in-memory SQLite
    store, which would vanish with the process that records the run, is refused.
    """
    uri = setting or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{launch_dir / STORE_DIR / DATABASE}"
    if uri.startswith("sqlite:") and uri.removeprefix("sqlite:").strip("/") in ("", ":memory:"):
        accepted = "a store that outlives the run: sqlite:///<file>.db, http(s)://<host>:<port> or a folder"
        raise ConfigError("tracking.uri", uri, f"{accepted} (an in-memory store vanishes with its process)")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(launch_dir / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:////abs/path`` URI, None for other stores."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:////") else None


def artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of an embedded store live beside its database: mlruns/artifacts/<experiment>."""
    database = sqlite_path(uri)
    if database is None:
        return None  # a server decides
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
    return (database.parent / "artifacts" / slug).as_uri()


def check_server(uri: str, timeout: float = CHECK_TIMEOUT) -> None:
    """Fail in one line when the tracking server of an http(s) URI does not answer an MLflow request
    within ``timeout`` seconds (a refused connection, or one accepted and never answered).

    MLflow's own client retries a dead server for minutes before it gives up.
    """
    if urlsplit(uri).scheme not in ("http", "https"):
        return
    import urllib.error  # here, not at the top: with http.client and ssl, 10 ms of every command's start
    import urllib.request

    probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(probe, timeout=timeout):
            return
    except urllib.error.HTTPError:  # it answered (an error is an answer: authentication, a proxy's page)
        return
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or one_line(error) or type(error).__name__
        if isinstance(reason, OSError):
            reason = reason.strerror or type(reason).__name__
        raise TrackingError(f"the tracking server {uri} does not answer (within {timeout:g} s): {reason}") from None


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and fail in one line when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(f"cannot create {what} {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrackingError(f"cannot write to {what} {folder} (read-only or not yours)")


def check_store(uri: str) -> None:
    """Fail fast, in one line naming the store, when ``uri`` cannot take a run: a server that does not
    answer, or an embedded store whose folder or file cannot be created or written, or whose file is not
    an SQLite database. Done by the training process before its first step, without MLflow."""
    check_server(uri)
    database = sqlite_path(uri)
    if database is None:
        return
    check_writable(database.parent, "the tracking store's folder")
    if not database.exists():
        return
    try:
        with database.open("rb") as handle:
            header = handle.read(len(SQLITE_MAGIC))
    except OSError as error:
        raise TrackingError(f"cannot read the tracking store {database}: {error.strerror}") from None
    if header and header != SQLITE_MAGIC:
        raise TrackingError(
            f"the tracking store {database} is not an SQLite database: move it away or set tracking.uri"
        )
    if not os.access(database, os.W_OK):
        raise TrackingError(f"cannot write to the tracking store {database} (read-only or not yours)")


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


def quiet_mlflow() -> None:
    """MLflow's INFO lines about creating its tables, and its progress bars and URLs, off; and a bound on every request
    to a tracking server (MLflow's own default retries a silent server for minutes), unless the user set theirs."""
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_RETRIES))


def connect(uri: str, experiment: str) -> tuple[Any, str]:
    """A client for ``uri`` and the id of ``experiment``, created if needed (as a model-training experiment, which
    MLflow's UI opens on its runs), safely under concurrency."""
    quiet_mlflow()
    check_server(uri)
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
                    if EXPERIMENT_KIND_TAG not in found.tags:  # made by an earlier version, or by hand
                        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
                    return client, found.experiment_id
                try:
                    location = artifact_location(uri, experiment)
                    return client, client.create_experiment(experiment, location, {EXPERIMENT_KIND_TAG: MODEL_TRAINING})
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


def sweep_parent(client: Any, experiment_id: str, sweep_id: str) -> str | None:
    """The id of the parent run that sweep ``sweep_id`` opened in this experiment, if any."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_id}' and tags.`{ROLE_TAG}` = 'sweep'",
        max_results=1,
    )
    return found[0].info.run_id if found else None


WHERE = logging.getLogger("framework.where")  # conf/config.yaml prints it without the log prefix: lines to copy


def log_where_to_look(run: Any, status: str = "FINISHED") -> None:
    """Log how to open ``run`` (a RunInfo whose links the tracker set) in MLflow's UI: a heading naming it (and its
    status, when it did not finish), then :func:`where_to_look`'s lines."""
    links = run.links
    what = "the run" if status == "FINISHED" else f"the {status} run"
    WHERE.info("to look at %s %r (%s):", what, run.run_name, links["mlflow_run_id"])
    for line in where_to_look(links["mlflow_uri"], links["mlflow_experiment_id"], links["mlflow_run_id"]):
        WHERE.info("  %s", line)


def where_to_look(uri: str, experiment_id: str, run_id: str) -> list[str]:
    """The lines that say how to open a run in MLflow's UI: the command that serves the store (an embedded one) and the
    address of the run's page."""
    database = sqlite_path(uri)
    if database is None:
        return [f"open {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"]
    return [
        f"mlflow ui --backend-store-uri sqlite:///{database} --host 127.0.0.1 --port {UI_PORT}",
        f"then open http://127.0.0.1:{UI_PORT}/#/experiments/{experiment_id}/runs/{run_id}",
    ]
