"""Copy every run of one MLflow tracking store into another: ``python -m framework migrate``.

Moves the embedded store of a launch directory (``./mlruns/mlflow.db``, its
artifacts in ``./mlruns/artifacts/``) into a team tracking server, or between
any two MLflow stores. From the launch directory:

    python -m framework migrate --to http://tracking-host:5000
    python -m framework migrate --to http://tracking-host:5000 --experiment adder --experiment echo
    python -m framework migrate --from sqlite:////data/old/mlflow.db --to sqlite:///mlruns/mlflow.db

Each active experiment of the source (or each one named) goes into the
experiment of the same name in the target, created if needed. Each active run
is copied with its name, start and end time, status, tags, params, the full
history of every metric and every artifact. Nesting survives: a tag holding a
copied run's id (``mlflow.parentRunId``, a sweep's ``best_run_id``) is
rewritten to the id of its copy. Each copy is tagged
``framework.migrated_from = <source uri>#<source run id>``, set once the copy
is complete; runs whose copy is already in the target are skipped, so running
the command again copies only what is missing. A copy interrupted half-way is
deleted from the target. Logged models and dataset inputs are not copied.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from framework.core.errors import TrackingError, described, one_line, print_error
from framework.tracking.store import (
    DATABASE,
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    PARENT_TAG,
    SQLITE_MAGIC,
    STORE_DIR,
    check_server,
    chunks,
    connect,
    pages,
    quiet_mlflow,
    resolve_uri,
    sqlite_path,
)

MIGRATED_TAG = "framework.migrated_from"  # "<source uri>#<source run id>" on every copy
RUN_NAME_TAG = "mlflow.runName"  # the target sets it from the run name
PAGE_SIZE = 1000


class MigrationError(RuntimeError):
    """The migration cannot go on; ``str()`` is one line."""


@dataclass
class Copy:
    """A source run and its copy in the target."""

    source: Any  # mlflow.entities.Run
    target_id: str
    target_tags: dict[str, str]
    client: Any  # the target's MlflowClient


@dataclass
class Tally:
    """What happened to the runs of one experiment."""

    copied: int = 0
    skipped: int = 0
    copies: list[Copy] = field(default_factory=list)


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def embedded_store(launch_dir: Path) -> str:
    """The URI of the embedded store of ``launch_dir``: ``sqlite:///<launch_dir>/mlruns/mlflow.db``."""
    return f"sqlite:///{(launch_dir / STORE_DIR / DATABASE).resolve()}"


def check_source(uri: str) -> None:
    """Fail in one line if the source store is not there, without creating anything."""
    database = sqlite_path(uri)
    if database is not None:
        if not database.is_file():
            raise MigrationError(f"no tracking store at {database} (source {uri})")
        with database.open("rb") as handle:
            if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                raise MigrationError(f"{database} is not an SQLite database, so no MLflow tracking store")
        return
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        folder = Path(unquote(parts.path))
        if not folder.is_dir():
            raise MigrationError(f"no tracking store at {folder} (source {uri})")
        return
    check_server(uri)


def source_experiments(client: Any, uri: str, names: Sequence[str]) -> list[Any]:
    """The active experiments of the source, or those named (each must exist and be active)."""
    from mlflow.entities import ViewType

    active = list(
        pages(
            lambda page_token: client.search_experiments(
                view_type=ViewType.ACTIVE_ONLY,
                max_results=PAGE_SIZE,
                order_by=["creation_time ASC"],
                page_token=page_token,
            )
        )
    )
    if not names:
        return active
    by_name = {experiment.name: experiment for experiment in active}
    missing = [name for name in names if name not in by_name]
    if missing:
        have = ", ".join(sorted(by_name)) or "none"
        raise MigrationError(f"no active experiment {missing[0]!r} in {uri} (it has: {have})")
    return [by_name[name] for name in dict.fromkeys(names)]


def active_runs(client: Any, experiment_id: str) -> list[Any]:
    """Every active run of an experiment, oldest first."""
    from mlflow.entities import ViewType

    return list(
        pages(
            lambda page_token: client.search_runs(
                [experiment_id],
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=PAGE_SIZE,
                order_by=["attribute.start_time ASC"],
                page_token=page_token,
            )
        )
    )


def parents_first(runs: Sequence[Any]) -> list[Any]:
    """``runs`` reordered so that each parent comes before its children, otherwise oldest first."""
    by_id = {run.info.run_id: run for run in runs}

    def depth(run: Any) -> int:
        seen, parent = {run.info.run_id}, run.data.tags.get(PARENT_TAG)
        while parent in by_id and parent not in seen:
            seen.add(parent)
            parent = by_id[parent].data.tags.get(PARENT_TAG)
        return len(seen) - 1

    return sorted(runs, key=depth)


def remapped(tags: dict[str, str], ids: dict[str, str]) -> dict[str, str]:
    """``tags`` with each value that is a copied run's id replaced by its copy's id."""
    return {key: ids.get(value, value) for key, value in tags.items()}


def copy_run(source: Any, target: Any, experiment_id: str, run: Any, origin: str, ids: dict[str, str]) -> Copy:
    """Copy one run (tags, params, metric histories, artifacts, status) into the target experiment."""
    from mlflow.entities import Metric, Param

    info = run.info
    tags = {k: v for k, v in remapped(run.data.tags, ids).items() if k not in (RUN_NAME_TAG, MIGRATED_TAG)}
    if PARENT_TAG in tags and run.data.tags[PARENT_TAG] not in ids:  # parent not copied yet: nested by relink()
        del tags[PARENT_TAG]
    new_id = target.create_run(experiment_id, start_time=info.start_time, tags=tags, run_name=info.run_name).info.run_id
    try:
        params = [Param(key, value) for key, value in run.data.params.items()]
        for batch in chunks(params, PARAMS_PER_BATCH):
            target.log_batch(new_id, params=batch, synchronous=True)
        metrics = [
            Metric(m.key, m.value, m.timestamp, m.step)
            for key in run.data.metrics
            for m in source.get_metric_history(info.run_id, key)
        ]
        for batch in chunks(metrics, METRICS_PER_BATCH):
            target.log_batch(new_id, metrics=batch, synchronous=True)
        if source.list_artifacts(info.run_id):
            with tempfile.TemporaryDirectory(prefix="framework-migrate-") as folder:
                source.download_artifacts(info.run_id, "", folder)
                target.log_artifacts(new_id, folder)
        target.set_tag(new_id, MIGRATED_TAG, origin)
        if info.status != "RUNNING":
            target.set_terminated(new_id, info.status, info.end_time)
    except BaseException:
        with contextlib.suppress(Exception):
            target.delete_run(new_id)  # no half copy left behind: the next migration copies it whole
        raise
    return Copy(run, new_id, {**tags, MIGRATED_TAG: origin}, target)


def migrate_experiment(source: Any, source_uri: str, target_uri: str, experiment: Any, ids: dict[str, str]) -> Tally:
    """Copy the runs of one source experiment not yet in the target; ``ids`` maps source to target run ids."""
    from mlflow.entities import ViewType

    target, experiment_id = connect(target_uri, experiment.name)
    present = target.get_experiment(experiment_id).tags
    for key, value in experiment.tags.items():
        if key not in present:
            target.set_experiment_tag(experiment_id, key, value)
    prefix = f"{source_uri}#"
    copies = {}
    for run in pages(
        lambda page_token: target.search_runs(
            [experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=PAGE_SIZE, page_token=page_token
        )
    ):
        origin = run.data.tags.get(MIGRATED_TAG, "")
        if origin.startswith(prefix):
            copies[origin.removeprefix(prefix)] = run
    tally = Tally()
    for run in parents_first(active_runs(source, experiment.experiment_id)):
        old_id = run.info.run_id
        copy = copies.get(old_id)
        if copy is not None:
            tally.skipped += 1
            tally.copies.append(Copy(run, copy.info.run_id, dict(copy.data.tags), target))
        else:
            try:
                tally.copies.append(copy_run(source, target, experiment_id, run, prefix + old_id, ids))
            except Exception as error:
                raise MigrationError(
                    f"cannot copy run {old_id} of experiment {experiment.name!r} to {target_uri}: {described(error)}"
                ) from error
            tally.copied += 1
        ids[old_id] = tally.copies[-1].target_id
    return tally


def relink(copies: Iterable[Copy], ids: dict[str, str]) -> None:
    """Point each copy's tags that name a source run (parent, best run) at that run's copy."""
    for copy in copies:
        for key, value in remapped(copy.source.data.tags, ids).items():
            if value != copy.source.data.tags[key] and copy.target_tags.get(key) != value:
                copy.client.set_tag(copy.target_id, key, value)


def migrate(source_uri: str, target_uri: str, names: Sequence[str] = (), echo: Callable[[str], None] = print) -> int:
    """Copy the runs of ``source_uri`` missing from ``target_uri``; returns how many were copied."""
    if source_uri == target_uri:
        raise MigrationError(f"the source and the target are the same store: {source_uri}")
    check_source(source_uri)
    from mlflow import MlflowClient

    source = MlflowClient(tracking_uri=source_uri)
    ids: dict[str, str] = {}
    copies: list[Copy] = []
    copied = skipped = 0
    for experiment in source_experiments(source, source_uri, names):
        tally = migrate_experiment(source, source_uri, target_uri, experiment, ids)
        echo(f"{experiment.name}: {plural(tally.copied, 'run')} copied, {tally.skipped} skipped")
        copies += tally.copies
        copied, skipped = copied + tally.copied, skipped + tally.skipped
    try:
        relink(copies, ids)
    except Exception as error:
        raise MigrationError(f"cannot relink the copied runs in {target_uri}: {one_line(error)}") from error
    echo(f"total: {plural(copied, 'run')} copied, {skipped} skipped, from {source_uri} to {target_uri}")
    return copied


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m framework migrate``."""
    command = argparse.ArgumentParser(
        prog="python -m framework migrate",
        description="Copy every run (tags, params, metric histories, artifacts, status, nesting) of one MLflow "
        "tracking store into another. Runs already copied are skipped, so it can be run again.",
        epilog="example: python -m framework migrate --to http://tracking-host:5000",
    )
    command.add_argument(
        "--to", required=True, metavar="URI", help="the target store (http://host:5000, sqlite:///...)"
    )
    command.add_argument(
        "--from",
        dest="source",
        metavar="URI",
        help=f"the source store (default: the embedded store sqlite:///<cwd>/{STORE_DIR}/{DATABASE})",
    )
    command.add_argument(
        "--experiment",
        action="append",
        default=[],
        metavar="NAME",
        help="copy only this experiment (repeatable; default: every active experiment)",
    )
    return command


def main(argv: list[str]) -> int:
    """Entry point of ``python -m framework migrate ARGS...``; returns the exit code."""
    args = parser().parse_args(argv)
    launch_dir = Path.cwd()
    source = resolve_uri(args.source, launch_dir) if args.source else embedded_store(launch_dir)
    target = resolve_uri(args.to, launch_dir)
    quiet_mlflow()  # no progress bar and no "View run" line per run

    def echo(line: str) -> None:
        print(line, flush=True)

    try:
        migrate(source, target, args.experiment, echo)
    except (MigrationError, TrackingError) as error:
        print_error(error)
        return 1
    except KeyboardInterrupt:
        print_error("interrupted; run the same command again to copy the rest")
        return 130
    except Exception as error:  # the source store failing: one line naming it
        print_error(f"cannot migrate {source} to {target}: {described(error)}")
        return 1
    return 0
