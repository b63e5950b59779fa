"""``resume=<run id>``: the config and last checkpoint of a tracked run, fetched from its store.

A run whose process is still alive is refused (both would write the same run), as is a run that
FINISHED; the checkpoint itself is validated by the engine against the run it rebuilds before anything
is replayed or allocated (:func:`framework.core.checkpoint.load`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from framework.core.errors import ConfigError, TrackingError
from framework.tracking.cleanup import PROCESS_TAG, process_gone
from framework.tracking.store import check_server, quiet_mlflow, resolve_uri, sqlite_path

CHECKPOINT = "checkpoints/last.npz"  # a run's last checkpoint, as an artifact


def fetch_run(uri: str, run_id: str, into: Path) -> tuple[dict[str, Any], Path]:
    """The config of tracked run ``run_id`` and its last checkpoint, downloaded into ``into``."""
    quiet_mlflow()
    check_server(uri)
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise TrackingError(f"resume={run_id}: there is no tracking store at {database}")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"resume={run_id}: no such run in {uri}") from None
    if found.info.status == "FINISHED":
        raise TrackingError(f"resume={run_id}: the run FINISHED; there is nothing to resume")
    process = found.data.tags.get(PROCESS_TAG, "")
    if found.info.status == "RUNNING" and process_gone(process) is not True:
        alive = "is still being recorded by" if process_gone(process) is False else "may still be trained by"
        raise TrackingError(
            f"resume={run_id}: the run {alive} process {process or '(unknown)'}; wait for it to end, or if it is gone "
            "mark it with `python -m framework cleanup` (--older-than for a run of another machine)"
        )
    try:
        config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", str(into))).read_text())
        path = Path(client.download_artifacts(run_id, CHECKPOINT, str(into)))
    except (MlflowException, OSError):
        raise TrackingError(
            f"resume={run_id}: the run has no {CHECKPOINT} to resume from (set train.checkpoint_every to save them)"
        ) from None
    return config, path


def resumable(
    config: dict[str, Any], overrides: list[str], launch_dir: Path, into: Path
) -> tuple[dict[str, Any], Path]:
    """The config of the run named by ``resume`` (with this command's tracking store) and its checkpoint's path.

    ``resume`` comes alone (or with ``tracking.uri``): the run continues with its own config.
    """
    run_id = config["resume"]
    extra = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "tracking.uri")]
    if extra:
        accepted = f"a run id given alone: the run continues with its own config (remove {' '.join(extra)})"
        raise ConfigError("resume", run_id, accepted)
    if not config["tracking"]["enabled"]:
        raise ConfigError("tracking.enabled", False, "true with resume=<run id>: the run is in the tracking store")
    original, path = fetch_run(resolve_uri(config["tracking"]["uri"], launch_dir), run_id, into)
    original["resume"] = run_id
    original["tracking"]["uri"] = config["tracking"]["uri"]
    return original, path
