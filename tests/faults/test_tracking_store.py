"""Faults of the tracking store: refused in one line before training, or, mid-run, nothing lost and nothing hung.

A store that cannot take a run (a file in the way of ./mlruns, a file that is not an SQLite database, a
read-only store, an in-memory store, a server that refuses or never answers) stops the run before its
first step with one line naming the store and no checkpoint. A store that fails while the run trains
ends the run with one line naming the store, what became of the run and the fallback file: the metrics
the store took and the fallback file's hold every step, and the file is whole even on a full disk. The
run is recorded as FAILED if the store can still close it, and is left RUNNING, for `cleanup`, if not.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clean_env, descendants, free_port, mlflow_server, one_line, our_processes, runs_of
from mlflow import MlflowClient

from framework.core.protocols import RunInfo
from framework.tracking.observer import FALLBACK, RESERVE_LIMIT, Fallback
from framework.tracking.recorder import CLOSE_WAIT

SHORT_RUN = ("train.steps=20", "hydra.run.dir=outputs/run")


def assert_refused_before_training(result: subprocess.CompletedProcess, tmp_path: Path, message: str) -> None:
    assert result.returncode == 1, result.stderr
    assert one_line(result.stderr) == f"framework: error: {message}"
    assert not (tmp_path / "outputs" / "run" / "checkpoints").exists()  # no step was taken


def test_a_file_in_the_way_of_the_store_folder(cli, tmp_path):
    """A file where the store's folder ./mlruns should be -> exit 1 before the first step, one line naming the
    folder, no checkpoint."""
    (tmp_path / "mlruns").write_text("not a folder")
    result = cli(*SHORT_RUN)
    folder = tmp_path / "mlruns"
    assert_refused_before_training(result, tmp_path, f"cannot create the tracking store's folder {folder}: File exists")


@pytest.mark.parametrize("content", [b"garbage, not a database\n" * 10, bytes(range(256)) * 20], ids=["text", "binary"])
def test_a_store_file_that_is_not_a_database(cli, tmp_path, content):
    """A store file that is not an SQLite database (corrupt) -> exit 1 before the first step, one line naming the
    file and what to do, the file left as it was."""
    database = tmp_path / "mlruns" / "mlflow.db"
    database.parent.mkdir()
    database.write_bytes(content)
    result = cli(*SHORT_RUN)
    message = f"the tracking store {database} is not an SQLite database: move it away or set tracking.uri"
    assert_refused_before_training(result, tmp_path, message)
    assert database.read_bytes() == content  # left as it was


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_store_is_refused(cli, tmp_path, uri):
    """tracking.uri of an in-memory store, which would vanish with the process that records the run -> exit 2
    before anything starts, one line saying what is accepted."""
    result = cli(*SHORT_RUN, f"tracking.uri={uri}")
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"framework: error: tracking.uri={uri!r}: expected a store that outlives the run: sqlite:///<file>.db, "
        "http(s)://<host>:<port> or a folder (an in-memory store vanishes with its process)"
    )
    assert not (tmp_path / "outputs" / "run" / "checkpoints").exists()


def in_a_mount_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the shell ``script`` in a user and mount namespace of its own (``unshare -rm``), where it may mount a
    small or read-only file system that nothing outside sees; skip the test where that is not allowed."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("unshare -rm (user and mount namespaces) is not allowed here")
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300
    )


def test_a_read_only_store_is_refused_before_training(tmp_path, store_template):
    """A store whose file system was remounted read-only (it can be read, not written) -> exit 1 before the first
    step, one line naming it."""
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(store_template, tmp_path / "mlruns" / "mlflow.db")
    result = in_a_mount_namespace(
        "mount --bind mlruns mlruns && mount -o remount,bind,ro mlruns && "
        f"exec {sys.executable} -m framework {' '.join(SHORT_RUN)}",
        tmp_path,
    )
    folder = tmp_path / "mlruns"
    assert_refused_before_training(
        result, tmp_path, f"cannot write to the tracking store's folder {folder} (read-only or not yours)"
    )


FILL_THE_DISK_AT = """
import os
import time
from pathlib import Path

from framework.core.hookspecs import hookimpl


@hookimpl
def framework_metrics(run, step, metrics):
    if step == int(os.environ["FILL_AT"]):
        deadline = time.monotonic() + 60
        while not list(Path("disk/mlruns/artifacts").glob("*/*/artifacts/config.yaml")):  # the run is recorded
            assert time.monotonic() < deadline, "the run was not recorded within 60 s"
            time.sleep(0.05)
        with open("disk/filler", "wb") as filler:  # the disk's last byte
            try:
                while True:
                    filler.write(b"x" * 65536)
                    filler.flush()
            except OSError:
                pass
"""


@pytest.mark.slow  # a tracking server, or a disk filled up: tens of seconds
def test_a_full_disk_keeps_every_metric_in_a_whole_fallback_file(tmp_path, store_template, install_plugin):
    """The disk of the store and of the run's folder fills up mid-run -> exit 1, one line naming the fallback file,
    which holds, whole and valid, every metric the store did not take (it was reserved when the run started)."""
    env = install_plugin("fill", FILL_THE_DISK_AT)
    (tmp_path / "disk").mkdir()
    script = (
        "mount -t tmpfs -o size=6m tmpfs disk && mkdir disk/mlruns && "
        f"cp {store_template} disk/mlruns/mlflow.db && "
        f"FILL_AT=300 PYTHONPATH={env['PYTHONPATH']} {sys.executable} -m framework train.steps=5000 "
        "tracking.log_every=1 tracking.uri=sqlite:///disk/mlruns/mlflow.db hydra.run.dir=disk/run model.log=false "
        "2> stderr.txt; echo $? > status.txt; cp disk/run/unrecorded-metrics.jsonl kept.jsonl"
    )
    result = in_a_mount_namespace(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "status.txt").read_text().strip() == "1"
    message = one_line((tmp_path / "stderr.txt").read_text().splitlines()[-1])
    fallback = tmp_path / "disk" / "run" / FALLBACK
    assert message.startswith(f"framework: error: cannot record the run in sqlite:///{tmp_path}/disk/mlruns/mlflow.db")
    assert message.endswith(f"; the metrics it did not record are in {fallback}")
    entries = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    steps = sorted({step for key, _value, _ms, step in entries if key == "loss"})
    assert steps and steps[-1] >= 300  # the steps after the disk filled up
    assert steps == list(range(steps[0], steps[-1] + 1))  # none missing in between


@pytest.mark.slow
def test_a_server_that_does_not_answer(cli, tmp_path):
    """A tracking server that refuses the connection, or accepts it and never answers -> exit 1 before the first step
    (of a run or of any job of a sweep), one line naming the server, within seconds."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = cli(*SHORT_RUN, f"tracking.uri={uri}", timeout=60)
    message = f"the tracking server {uri} does not answer (within 5 s): Connection refused"
    assert_refused_before_training(result, tmp_path, message)

    result = cli("--multirun", "seed=0,1", f"tracking.uri={uri}", timeout=60)
    assert result.returncode == 1
    assert one_line(result.stderr) == f"framework: error: {message}"
    assert not (tmp_path / "multirun").exists()  # no job started

    with socket.socket() as silent:  # connections are accepted (the backlog) and never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = cli(*SHORT_RUN, f"tracking.uri={uri}", timeout=60)
        assert time.monotonic() - started < 30
    assert_refused_before_training(
        result, tmp_path, f"the tracking server {uri} does not answer (within 5 s): timed out"
    )


SERVER_FAULTS = {  # what happens to the server, and what became of the run after it
    "killed": (signal.SIGKILL, "MlflowException: API request to "),  # the close attempt is refused at once
    "frozen": (signal.SIGSTOP, f"the store did not answer within {CLOSE_WAIT:g} s"),  # the attempt hangs
}


@pytest.mark.parametrize("fault", ["killed", pytest.param("frozen", marks=pytest.mark.slow)])
@pytest.mark.slow  # a tracking server, or a disk filled up: tens of seconds
def test_a_server_that_fails_mid_run_loses_no_metric(tmp_path, fault):
    """The tracking server killed or frozen (SIGSTOP) while the run trains -> exit 1, one line naming the server,
    the run, left RUNNING for `cleanup`, and the fallback file; every step the run took is in the server's
    database or in the fallback file."""
    how, why = SERVER_FAULTS[fault]
    timeout = 5 if fault == "killed" else int(CLOSE_WAIT) + 2  # a frozen server's requests fail after this
    with mlflow_server(tmp_path / "server") as (uri, server):
        run = subprocess.Popen(
            [sys.executable, "-m", "framework", "train.steps=100000000", "tracking.log_every=1", f"tracking.uri={uri}"],
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
            _, stderr = run.communicate(timeout=180)
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
    assert f"; the run {run_id} is left RUNNING ({why}" in message
    assert message.endswith(
        f"): `python -m framework cleanup` marks it FAILED; the metrics it did not record are in {fallback}"
    )
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
    while not (found := list(Path("mlruns/artifacts").glob("*/*/artifacts/overrides.yaml"))):  # the run is created
        assert time.monotonic() < deadline, "the run's artifact folder did not appear"
        time.sleep(0.05)
    folder = found[0].parent
    shutil.rmtree(folder)
    folder.write_text("a file where the run's artifact folder was")
"""


def test_a_store_whose_artifact_folder_breaks_mid_run_records_the_run_failed(cli, install_plugin, store, tmp_path):
    """The run's artifact folder replaced by a file while the run trains -> exit 1, one line naming the store,
    the run, recorded as FAILED with that reason, and the fallback file; every step kept."""
    env = install_plugin("break_artifacts", BREAK_ARTIFACTS_AT)
    result = cli(
        "train.steps=2000",
        "train.checkpoint_every=100",
        "tracking.log_every=1",
        "hydra.run.dir=outputs/run",
        env={**env, "BREAK_ARTIFACTS_AT": "150"},
    )
    message = one_line(result.stderr)
    (tracked,) = runs_of(store, "counting")
    run_id, fallback = tracked.info.run_id, tmp_path / "outputs" / "run" / FALLBACK
    assert result.returncode == 1, result.stderr
    assert message.startswith(f"framework: error: cannot record the run in sqlite:///{tmp_path}/mlruns/mlflow.db: ")
    assert message.endswith(
        f"; the run {run_id} is recorded as FAILED; the metrics it did not record are in {fallback}"
    )
    assert tracked.info.status == "FAILED"
    assert message.removeprefix("framework: error: ").startswith(tracked.data.tags["error"])
    assert_every_step_kept(store, run_id, fallback)


@pytest.mark.slow
def test_no_process_is_left_after_runs_that_finish_or_fail(cli, tmp_path):
    """A run that finishes, one that fails before training (a bad store), and `--cfg job`, which runs nothing ->
    no process of theirs is left running (the recording process ends with its command)."""
    mark = {"TEST_PROCESS_MARK": os.urandom(8).hex()}
    assert cli(*SHORT_RUN, env=mark).returncode == 0
    assert cli(*SHORT_RUN, "tracking.uri=http://127.0.0.1:1", env=mark).returncode == 1
    assert cli("--cfg", "job", env=mark).returncode == 0
    assert our_processes(mark["TEST_PROCESS_MARK"]) == set()


def test_the_fallback_file_of_a_very_long_run_takes_at_most_its_limit_of_disk(tmp_path):
    """The fallback file is reserved for every metric a run will log, but at most RESERVE_LIMIT bytes: a run of 10^8
    steps logging each took tens of gigabytes before its first step (and filled this machine's disk in a test); a
    short run reserves what it needs, and what is written over the room is whole and cut to its length."""

    def reserved(steps: int, log_every: int) -> tuple[Fallback, int]:
        config = {"tracking": {"log_every": log_every}, "train": {"eval_every": 0}}
        fallback = Fallback(tmp_path / f"{steps}.jsonl", RunInfo("counting", "counting", config, [], steps))
        fallback.known({"loss": 1.0, "grad_norm": 1.0, "w_x": 1.0, "w_rec": 1.0}, evaluation=False)
        return fallback, os.stat(fallback.path).st_blocks * 512  # allocated, not only the apparent size

    long, allocated = reserved(10**8, 1)
    assert long.path.stat().st_size == RESERVE_LIMIT and allocated <= RESERVE_LIMIT + 2**20
    short, allocated = reserved(500, 10)
    assert 52 * 4 * 64 <= short.path.stat().st_size < 2**16 and allocated < 2**17  # 52 logged steps, 4 metrics
    entries = [["loss", 0.5, 1, 0], ["loss", 0.25, 2, 10]]
    short.write(entries)
    assert [json.loads(line) for line in short.path.read_text().splitlines()] == entries
