"""The recorder server that forks every run's tracking worker with MLflow loaded, and the start of it that
``python -m framework`` does before anything else is imported: real processes, real runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from conftest import alive, assert_no_runs, one_line, runs_of

from framework.tracking import recorder_process, recorder_server
from framework.tracking.cleanup import PROCESS_TAG
from framework.tracking.recorder_process import FOLDER_ENV, IDLE_ENV


@pytest.mark.parametrize(
    ("args", "off"),
    [
        (["task=adder", "tracking.enabled=false"], True),
        (["tracking.enabled=False"], True),
        (["++tracking.enabled=FALSE"], True),
        (["tracking.enabled=false", "tracking.enabled=true"], False),  # the last one wins, as in Hydra
        (["tracking.enabled=true"], False),
        (["task=adder"], False),
        (["tracking.enabled_by_me=false"], False),
        (["tracking.uri=sqlite:////tmp/tracking.enabled=false"], False),
    ],
)
def test_the_last_tracking_switch_on_the_command_line_decides(args, off):
    assert recorder_process.tracking_switched_off(args) is off


def logged(folder: Path, what: str) -> list[int]:
    """The pids the servers' logs in ``folder`` name: ``what`` is "loaded" (servers) or "worker" (their workers)."""
    which = 0 if what == "loaded" else 1
    return [pid for log in sorted(folder.glob("*.log")) for pid in recorder_server.pids_in_log(log)[which]]


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(0.02)


@pytest.fixture
def servers(tmp_path, monkeypatch):
    """A folder of recorder servers of the test's own, servers that exit as soon as they are idle (in this
    process; CLI runs are given the folder by :func:`env`); any server still running at the end is stopped."""
    folder = tmp_path / "recorder"
    monkeypatch.setenv(FOLDER_ENV, str(folder))
    monkeypatch.setenv(IDLE_ENV, "0")
    monkeypatch.setattr(recorder_process, "_starting", None)
    yield folder
    if folder.exists():
        for pid in logged(folder, "loaded"):
            if alive(pid):
                os.kill(pid, signal.SIGTERM)


def env(folder: Path, idle: str = "60") -> dict[str, str]:
    return {FOLDER_ENV: str(folder), IDLE_ENV: idle}


@pytest.mark.parametrize(
    "args",
    [
        ["task=counting", "tracking.enabled=false"],
        ["--multirun", "task=counting", "seed=0,1"],
        ["list"],
        ["cleanup", "--help"],
    ],
)
def test_no_server_is_started_for_a_command_that_records_nothing_here(servers, args):
    recorder_process.prewarm(args)
    assert recorder_process._starting is None
    assert list(servers.glob("*.sock")) == []


def test_a_tracked_run_starts_a_server_that_forks_its_worker_then_exits_when_idle(servers, capfd):
    """The worker takes the training process's standard error and working folder; a connection that closes before
    any run starts ends its worker at once, and a server with nothing left to do (idle 0) removes its socket."""
    recorder_process.prewarm(["task=counting"])
    server = recorder_process._starting
    assert server is not None and server.poll() is None
    connection = recorder_process.open_worker()
    (address,) = servers.glob("*.sock")
    wait_until(lambda: logged(servers, "worker"), "a forked worker")
    (worker,) = logged(servers, "worker")
    for link in ("fd/2", "cwd"):
        wait_until(lambda link=link: os.readlink(f"/proc/{worker}/{link}") == os.readlink(f"/proc/self/{link}"), link)
    connection.close()
    assert connection.failure == f"the tracking worker stopped (its server's log: {address.with_suffix('.log')})"
    assert server.wait(timeout=60) == 0
    assert not address.exists()
    assert logged(servers, "loaded") == [server.pid]


def test_a_worker_that_fails_leaves_its_traceback_in_the_servers_log(servers):
    """A connection whose first bytes are not a run's: the worker fails before it takes the run's standard error."""
    recorder_process.prewarm(["task=counting"])
    connection = recorder_process.connect(recorder_process.server_address(), 0.0)
    connection.sendall(struct.pack("!I", 9) + b"not json\n")
    assert connection.recv(1) == b""  # the worker is gone
    connection.close()
    assert recorder_process._starting.wait(timeout=60) == 0  # the server stays up for the next run: idle 0 here
    (log,) = servers.glob("*.log")
    assert "json.decoder.JSONDecodeError" in log.read_text()


def test_a_training_process_gone_with_answers_unread_leaves_its_run_killed(servers, default_store, tmp_path):
    """A training process killed with answers of its worker unread: the connection is reset, not closed (a recv
    fails), and the worker still closes the run as KILLED. It used to wait for the next message for ever."""
    recorder_process.prewarm(["task=counting"])
    connection = recorder_process.connect(recorder_process.server_address(), 0.0)
    hello = json.dumps({"cwd": str(tmp_path), "env": dict(os.environ)}).encode()
    run = {
        **{"task": "counting", "experiment": "reset", "name": "unread", "config": {}, "overrides": []},
        **{"objective": "loss", "maximize": False, "resume": None, "sweep_id": None},
    }
    start = {"op": "start", "uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "experiment": "reset", "run": run}
    connection.sendall(struct.pack("!I", len(hello)) + hello + json.dumps(start).encode() + b"\n")
    wait_until(lambda: b'"started"' in connection.recv(4096, socket.MSG_PEEK), "the run started (answer unread)")
    connection.close()  # with the answer unread: the worker's end is reset
    (recorded,) = runs_of(default_store, "reset")
    wait_until(lambda: default_store.get_run(recorded.info.run_id).info.status == "KILLED", "the run KILLED")


def test_a_server_whose_socket_is_deleted_exits(servers, monkeypatch):
    """As when CI deletes its folder at the end: nobody can reach the server any more."""
    monkeypatch.setenv(IDLE_ENV, "3600")
    recorder_process.prewarm(["task=counting"])
    server = recorder_process._starting
    recorder_process.open_worker().close()  # once it listens
    assert server.poll() is None
    (address,) = servers.glob("*.sock")
    address.unlink()
    assert server.wait(timeout=60) == 0


def test_later_runs_are_recorded_by_workers_of_the_first_runs_server(cli, default_store, servers):
    for seed in (0, 1):
        result = cli("task=counting", "train.steps=20", f"seed={seed}", env=env(servers))
        assert result.returncode == 0, result.stderr
    runs = runs_of(default_store, "counting")
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    losses = default_store.get_metric_history(runs[1].info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(21))  # 20 training steps and the final evaluation
    (server,) = logged(servers, "loaded")
    assert alive(server)  # idle for up to 60 s, waiting for the next run
    recorded_by = [int(run.data.tags[PROCESS_TAG].split(":")[1]) for run in runs]
    assert recorded_by == logged(servers, "worker")


def test_a_killed_server_is_replaced_by_the_next_run(cli, default_store, servers):
    assert cli("task=counting", "train.steps=5", env=env(servers)).returncode == 0
    (killed,) = logged(servers, "loaded")
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: not alive(killed), "the server gone")
    assert list(servers.glob("*.sock"))  # left behind
    result = cli("task=counting", "train.steps=5", env=env(servers))
    assert result.returncode == 0, result.stderr
    assert [run.info.status for run in runs_of(default_store, "counting")] == ["FINISHED", "FINISHED"]
    (replacement,) = logged(servers, "loaded")
    assert replacement != killed


def test_a_server_that_cannot_load_mlflow_fails_the_run_in_one_line_with_the_error(cli, tmp_path, servers):
    broken = tmp_path / "site" / "mlflow"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("this mlflow is broken")\n')
    result = cli("task=counting", "train.steps=5", env={**env(servers), "PYTHONPATH": str(broken.parent)})
    assert result.returncode == 1
    (log,) = servers.glob("*.log")
    line = one_line(result.stderr)
    # "did not start" or "stopped", as the run saw the server exit or lose its connection first
    assert line.startswith("framework: error: the tracking worker"), line
    assert line.endswith(f": ImportError: this mlflow is broken (its server's log: {log})"), line
    assert "Traceback" in log.read_text()
    assert not list(servers.glob("*.sock"))  # the next run starts a server again
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            {IDLE_ENV: "soon"},
            f"{IDLE_ENV}=soon: expected a number of seconds >= 0 (0: the server exits with its run)",
        ),
        ({IDLE_ENV: "-1"}, f"{IDLE_ENV}=-1: expected a number of seconds >= 0 (0: the server exits with its run)"),
        ({FOLDER_ENV: "{tmp}/a-file/recorder"}, "cannot create the tracking worker's folder {tmp}/a-file/recorder: "),
        ({FOLDER_ENV: "{tmp}/shared"}, "the tracking worker's folder {tmp}/shared is open to other users ("),
        ({FOLDER_ENV: "{tmp}/" + "deep/" * 20}, "the tracking worker's folder {tmp}/" + "deep/" * 19 + "deep is too"),
    ],
)
def test_a_bad_recorder_setting_fails_the_run_in_one_line(cli, tmp_path, setting, message):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "shared").mkdir(mode=0o755)
    (tmp_path / "shared").chmod(0o755)  # whatever the umask
    setting = {key: value.format(tmp=tmp_path) for key, value in setting.items()}
    result = cli("task=counting", "train.steps=5", env={IDLE_ENV: "0", **setting})
    assert result.returncode == 1
    assert one_line(result.stderr).startswith("framework: error: " + message.format(tmp=tmp_path))
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


def test_the_server_depends_on_the_framework_code_and_mlflow_settings(monkeypatch):
    first = recorder_process.identity()
    assert recorder_process.identity() == first
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    assert recorder_process.identity() != first
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    monkeypatch.setenv("SOMETHING_ELSE", "7")  # goes to the worker with each run
    assert recorder_process.identity() == first
    module = Path(recorder_process.__file__)
    times = module.stat()
    try:
        os.utime(module, ns=(times.st_atime_ns, times.st_mtime_ns + 1))
        assert recorder_process.identity() != first
    finally:
        os.utime(module, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert recorder_process.identity() == first


def test_a_run_never_waits_for_a_worker_that_does_not_read_yet(tmp_path):
    """A cold server accepts a run's connection only once it has loaded MLflow: meanwhile the run's messages (more
    than a socket holds) wait in the training process, which trains on; the worker then gets all of them, in order."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "server.sock"))
    listener.listen()
    connection = recorder_process.RecorderConnection(
        recorder_process.try_connect(tmp_path / "server.sock"), tmp_path / "server.log"
    )
    entries = [["loss", 0.5, 0, step] for step in range(1000)]
    sender = threading.Thread(
        target=lambda: [connection.send("metrics", entries=entries) for _ in range(200)], daemon=True
    )
    sender.start()
    sender.join(timeout=60)
    assert not sender.is_alive(), "send() waited for the worker"
    worker, _ = listener.accept()
    size, _, _, _ = socket.recv_fds(worker, 4, 1)
    received = worker.makefile("rb")
    hello = json.loads(received.read(struct.unpack("!I", size)[0]))
    assert hello["cwd"] == os.getcwd()
    closing = threading.Thread(target=connection.close)
    closing.start()
    messages = [json.loads(line) for line in received]  # until the training process has sent everything
    assert messages == [{"op": "metrics", "entries": entries}] * 200
    received.close()
    worker.close()  # the worker exits: the training process's close() returns
    closing.join(timeout=60)
    assert not closing.is_alive()
