"""Faults of the tracking store: refused in one line before training, or, mid-run, nothing lost.

A store that cannot take a run (a file in the way of ./mlruns, a file that is not an SQLite
database, a database another process keeps locked, a server that does not answer) stops the run
before its first step with one line naming the store, exit code 1, and no checkpoint. A store that
fails while the run trains (the tracking server dies) ends the run with one line naming the store
and the fallback file; the metrics the store took and the fallback file's hold every step.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clean_env, descendants, free_port, mlflow_server, one_line, runs_of
from mlflow import MlflowClient

from framework.tracking import FALLBACK

SHORT_RUN = ("train.steps=20", "hydra.run.dir=outputs/run")


def assert_refused_before_training(result: subprocess.CompletedProcess, tmp_path: Path, message: str) -> None:
    assert result.returncode == 1, result.stderr
    assert one_line(result.stderr) == f"framework: error: {message}"
    assert not (tmp_path / "outputs" / "run" / "checkpoints").exists()  # no step was taken


def test_a_file_in_the_way_of_the_store_folder(cli, tmp_path):
    """A file where the store's folder ./mlruns should be (an unwritable store) -> exit 1 before the first step,
    one line naming the store and the folder, no checkpoint."""
    (tmp_path / "mlruns").write_text("not a folder")
    result = cli(*SHORT_RUN)
    database = tmp_path / "mlruns" / "mlflow.db"
    assert_refused_before_training(
        result, tmp_path, f"cannot create the tracking store sqlite:///{database}: File exists: {database.parent}"
    )


@pytest.mark.parametrize("content", [b"garbage, not a database\n" * 10, bytes(range(256)) * 20], ids=["text", "binary"])
def test_a_store_file_that_is_not_a_database(cli, tmp_path, content):
    """A store file that is not an SQLite database (corrupt) -> exit 1 before the first step, one line naming the
    file and what to do, the file left as it was."""
    database = tmp_path / "mlruns" / "mlflow.db"
    database.parent.mkdir()
    database.write_bytes(content)
    result = cli(*SHORT_RUN)
    assert_refused_before_training(
        result,
        tmp_path,
        f"the tracking store {database} is not an SQLite database (file is not a database): "
        "move it away or set tracking.uri",
    )
    assert database.read_bytes() == content  # left as it was


def test_a_store_locked_by_another_process(cli, tmp_path, default_store):
    """A store another process keeps locked -> exit 1 after waiting 5 s, before the first step, one line naming the
    store, no run created."""
    database = tmp_path / "mlruns" / "mlflow.db"
    with sqlite3.connect(database, isolation_level=None) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        result = cli(*SHORT_RUN)
        holder.execute("ROLLBACK")
    assert_refused_before_training(
        result, tmp_path, f"the tracking store sqlite:///{database} is locked by another process (waited 5 s)"
    )
    assert default_store.search_runs([e.experiment_id for e in default_store.search_experiments()]) == []


def test_a_server_that_does_not_answer(cli, tmp_path):
    """A tracking server that does not answer -> exit 1 before the first step (of a run or of any job of a sweep),
    one line naming the server."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = cli(*SHORT_RUN, f"tracking.uri={uri}", timeout=60)
    assert_refused_before_training(result, tmp_path, f"cannot reach the tracking server {uri}: Connection refused")

    result = cli("--multirun", "seed=0,1", f"tracking.uri={uri}", timeout=60)
    assert result.returncode == 1
    assert one_line(result.stderr) == f"framework: error: cannot reach the tracking server {uri}: Connection refused"
    assert not (tmp_path / "multirun").exists()  # no job started


def test_a_server_that_dies_mid_run_loses_no_metric(tmp_path):
    """The tracking server killed while the run trains -> exit 1, one line naming the server and the fallback file;
    every step the run took is in the server's database or in the fallback file."""
    with mlflow_server(tmp_path / "server") as (uri, server):
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "framework",
                "train.steps=100000000",
                "tracking.flush_every=200",
                f"tracking.uri={uri}",
            ],
            cwd=tmp_path,
            env=clean_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for line in run.stdout:  # the run exists in the server
                if "Tracking run" in line:
                    break
            time.sleep(1.0)
            for pid in {server.pid, *descendants(server.pid)}:  # the server and its app workers, at once
                os.kill(pid, signal.SIGKILL)
            _, stderr = run.communicate(timeout=120)
        finally:
            run.kill()
    (output,) = (tmp_path / "outputs").glob("*/*")
    fallback = output / FALLBACK
    message = one_line(stderr)
    assert run.returncode == 1
    assert message.startswith(f"framework: error: cannot record the run in {uri}: ")
    assert message.endswith(f"; the metrics it did not record are in {fallback}")

    recorded = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'server' / 'server.db'}")
    (tracked,) = runs_of(recorded, "counting")
    stored = {m.step for m in recorded.get_metric_history(tracked.info.run_id, "loss")}
    kept = {step for key, _value, _ms, step in map(json.loads, fallback.read_text().splitlines()) if key == "loss"}
    assert stored and kept, (len(stored), len(kept))
    assert stored | kept == set(range(max(kept) + 1))  # every step, in the store or in the fallback file
