"""A real ``mlflow server`` as the tracking store: a parallel sweep recorded through its REST API.

The server runs on 127.0.0.1 with a SQLite backend and a local artifact root
in a temporary directory, is stopped by its process id, and must leave no
process behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import alive, clean_env, descendants, free_port, one_line, runs_of, serving
from mlflow import MlflowClient
from test_sweep import sweep_runs


@contextmanager
def mlflow_server(root: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``mlflow server`` on a free port of 127.0.0.1, with its store and artifacts under ``root``."""
    port = free_port()
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", f"sqlite:///{root / 'server.db'}"),
        *("--artifacts-destination", str(root / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    uri = f"http://127.0.0.1:{port}"
    with serving(command, f"{uri}/health", root, clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")) as server:
        yield uri, server


def test_parallel_sweep_into_a_tracking_server(cli, tmp_path):
    with mlflow_server(tmp_path / "server") as (uri, server):
        helpers = descendants(server.pid)
        assert helpers, "the server runs its app in worker processes"
        result = cli(
            *("--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
            *("seed=0,1", "train.steps=25", f"tracking.uri={uri}"),
        )
        assert result.returncode == 0, result.stderr
        assert not (tmp_path / "mlruns").exists()  # nothing went to the embedded store

        client = MlflowClient(tracking_uri=uri)
        parent, children = sweep_runs(client, "counting")
        assert parent.info.status == "FINISHED"
        assert sorted(int(c.data.params["seed"]) for c in children) == [0, 1]
        for child in children:
            assert child.info.status == "FINISHED"
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "grad_norm")]
            assert sorted(steps) == list(range(25))
            assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"config.yaml", "figures"}
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"summary.json", "sweep.yaml"}
        assert len(runs_of(client, "counting")) == 3

        server.send_signal(signal.SIGTERM)  # stop it by its pid
        server.wait(timeout=30)
    assert not [pid for pid in helpers if alive(pid)], "the server left processes behind"


def test_unreachable_server_fails_fast_in_one_line(cli, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = cli("train.steps=5", f"tracking.uri={uri}", timeout=60)
    assert result.returncode == 1
    assert one_line(result.stderr) == f"framework: error: cannot reach the tracking server {uri}: Connection refused"
    logs = "".join(path.read_text() for path in tmp_path.glob("outputs/*/*/framework.log"))
    assert "finished in" not in logs  # training never started

    result = cli("--multirun", "seed=0,1", f"tracking.uri={uri}", timeout=60)
    assert result.returncode == 1
    assert one_line(result.stderr) == f"framework: error: cannot reach the tracking server {uri}: Connection refused"
    assert not (tmp_path / "multirun").exists()  # no job started
