"""Faults of the tracking store: refused in one line before training, or, mid-run, nothing lost.

A store that cannot take a run (a file in the way of ./mlruns, a file that is not an SQLite
database, a database another process keeps locked, a server that does not answer) stops the run
before its first step with one line naming the store, exit code 1, and no checkpoint. A store that
fails while the run trains ends the run with one line naming the store, the fallback file and what
became of the run; the metrics the store took and the fallback file's hold every step. The run is
recorded as FAILED if the store can still close it (its artifact folder broke), and is left RUNNING,
for `cleanup`, if not (the tracking server died).
"""

from __future__ import annotations

import contextlib
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

from framework.tracking.recorder import CLOSE_WAIT
from framework.tracking.tracker import FALLBACK

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


SERVER_FAULTS = {  # what happens to the server, and what became of the run after it
    "killed": (signal.SIGKILL, "MlflowException: API request to "),  # the close attempt is refused at once
    "frozen": (signal.SIGSTOP, f"the store did not answer within {CLOSE_WAIT:g} s"),  # the attempt hangs
}


@pytest.mark.parametrize("fault", ["killed", pytest.param("frozen", marks=pytest.mark.slow)])
def test_a_server_that_fails_mid_run_loses_no_metric(tmp_path, fault):
    """The tracking server killed or frozen (SIGSTOP) while the run trains -> exit 1, one line naming the server,
    the fallback file and the run, left RUNNING for `cleanup`; every step the run took is in the server's
    database or in the fallback file."""
    how, why = SERVER_FAULTS[fault]
    timeout = 5 if fault == "killed" else int(CLOSE_WAIT) + 2  # a frozen server's requests fail after this
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
            env=clean_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        server_pids = {server.pid, *descendants(server.pid)}  # the server and its app workers, at once
        try:
            for line in run.stdout:  # the run exists in the server
                if "Tracking run" in line:
                    break
            time.sleep(1.0)
            for pid in server_pids:
                os.kill(pid, how)
            _, stderr = run.communicate(timeout=120)
        finally:
            run.kill()
            for pid in server_pids:  # a frozen server stops when asked only once it runs again
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
    (output,) = (tmp_path / "outputs").glob("*/*")
    fallback = output / FALLBACK
    message = one_line(stderr)
    assert run.returncode == 1
    assert message.startswith(f"framework: error: cannot record the run in {uri}: ")

    recorded = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'server' / 'server.db'}")
    (tracked,) = runs_of(recorded, "counting")
    run_id = tracked.info.run_id
    assert f"; the metrics it did not record are in {fallback}; the run {run_id} is left RUNNING ({why}" in message
    assert message.endswith("): `python -m framework cleanup` marks it FAILED")
    assert tracked.info.status == "RUNNING"
    assert_every_step_kept(recorded, run_id, fallback)


def assert_every_step_kept(client: MlflowClient, run_id: str, fallback: Path) -> None:
    """Every step's loss is in the store or in the fallback file, and each holds some."""
    stored = {m.step for m in client.get_metric_history(run_id, "loss")}
    kept = {step for key, _value, _ms, step in map(json.loads, fallback.read_text().splitlines()) if key == "loss"}
    assert stored and kept, (len(stored), len(kept))
    assert stored | kept == set(range(max(kept) + 1))  # every step, in the store or in the fallback file


BREAK_ARTIFACTS_AT = """
import os
import shutil
import time
from pathlib import Path

from framework.core.hookspecs import hookimpl


@hookimpl
def framework_metrics(run, step, metrics):
    if str(step) != os.environ["BREAK_ARTIFACTS_AT"]:
        return
    deadline = time.monotonic() + 60
    while not (found := list(Path("mlruns/artifacts").glob("*/*/artifacts"))):  # the worker logged config.yaml
        assert time.monotonic() < deadline, "the run's artifact folder did not appear"
        time.sleep(0.05)
    (folder,) = found
    shutil.rmtree(folder)
    folder.write_text("a file where the run's artifact folder was")
"""


def test_a_store_whose_artifact_folder_breaks_mid_run_records_the_run_failed(cli, install_plugin, store, tmp_path):
    """The run's artifact folder replaced by a file while the run trains -> exit 1, one line naming the store,
    the fallback file and the run, recorded as FAILED with that reason; every step kept."""
    env = install_plugin("break_artifacts", BREAK_ARTIFACTS_AT)
    result = cli(
        "train.steps=2000",
        "train.checkpoint_every=100",
        "tracking.flush_every=50",
        "hydra.run.dir=outputs/run",
        env={**env, "BREAK_ARTIFACTS_AT": "150"},
    )
    message = one_line(result.stderr)
    (tracked,) = runs_of(store, "counting")
    run_id, fallback = tracked.info.run_id, tmp_path / "outputs" / "run" / FALLBACK
    assert result.returncode == 1, result.stderr
    assert message.startswith(f"framework: error: cannot record the run in sqlite:///{tmp_path}/mlruns/mlflow.db: ")
    said = f"; the metrics it did not record are in {fallback}; the run {run_id} is recorded as FAILED"
    assert message.endswith(said)
    assert tracked.info.status == "FAILED"
    assert tracked.data.tags["error"] == message.removeprefix("framework: error: ").rsplit("; the run ", 1)[0]
    assert_every_step_kept(store, run_id, fallback)
