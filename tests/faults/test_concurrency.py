"""Many writers at once: 16 jobs, 4 at a time (joblib, separate processes, each with its recording process),
into one fresh embedded store and into a real tracking server. All 16 FINISHED, every history complete,
every run in the right experiment under one parent, and the server leaves no process behind."""

from __future__ import annotations

import math
import signal
import subprocess
import sys

import pytest
import yaml
from conftest import alive, clean_env, descendants, mlflow_server, sweep_runs
from mlflow import MlflowClient

from framework.core import checkpoint

JOBS, AT_ONCE, STEPS = 16, 4, 40
SWEEP = ("--multirun", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={AT_ONCE}", f"seed=range({JOBS})")


def assert_sixteen_complete_children(client: MlflowClient) -> None:
    parent, children = sweep_runs(client, "counting")  # one parent, every child nested under it
    assert len(children) == JOBS
    assert {c.info.status for c in children} == {"FINISHED"}
    assert sorted(int(c.data.params["seed"]) for c in children) == list(range(JOBS))
    for child in children:
        loss = client.get_metric_history(child.info.run_id, "loss")
        assert sorted(m.step for m in loss) == [*range(0, STEPS, 10), STEPS - 1, STEPS]  # every 10th, the final
        assert all(math.isfinite(m.value) for m in loss)
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"config.yaml", "figures", "checkpoints"}
        assert len(child.outputs.model_outputs) == 1  # its trained network, as an MLflow model
    assert [e.name for e in client.search_experiments()] == ["counting", "Default"]
    assert parent.data.metrics["jobs_finished"] == JOBS
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_sixteen_jobs_into_a_fresh_embedded_store(cli, store, tmp_path):
    """16 jobs, 4 at a time, into an embedded store that does not exist yet -> all 16 FINISHED with complete
    histories, checkpoints and models, in the right experiment, under one parent."""
    result = cli(*SWEEP, f"train.steps={STEPS}", timeout=900)  # ./mlruns does not exist yet
    assert result.returncode == 0, result.stderr
    assert_sixteen_complete_children(store)


@pytest.mark.slow
def test_sixteen_jobs_into_a_tracking_server(cli, tmp_path):
    """16 jobs, 4 at a time, into a real tracking server -> the same, nothing in ./mlruns, and the server stopped
    by its pid leaves no process behind."""
    with mlflow_server(tmp_path / "server") as (uri, server):
        helpers = descendants(server.pid)
        assert helpers, "the server runs its app in worker processes"
        result = cli(*SWEEP, f"train.steps={STEPS}", f"tracking.uri={uri}", timeout=900)
        assert result.returncode == 0, result.stderr
        assert not (tmp_path / "mlruns").exists()  # nothing went to the embedded store
        assert_sixteen_complete_children(MlflowClient(tracking_uri=uri))
        server.send_signal(signal.SIGTERM)  # stop it by its pid
        server.wait(timeout=30)
        assert not [pid for pid in helpers if alive(pid)], "the server left processes behind"


@pytest.mark.slow
def test_runs_and_sweeps_started_at_once_have_a_folder_each(tmp_path):
    """16 runs, and two sweeps, started at the same moment in one folder -> each run and each sweep job has an output
    folder of its own, holding its own config and checkpoint (before, same-second runs shared one and overwrote each
    other's checkpoints)."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "framework", f"seed={seed}", "train.steps=30", "tracking.enabled=false"],
            cwd=tmp_path,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(16)
    ]
    sweeps = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "framework",
                "--multirun",
                f"seed={first},{first + 1}",
                "train.steps=30",
                "tracking.enabled=false",
            ],
            cwd=tmp_path,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for first in (100, 200)
    ]
    for process in [*runs, *sweeps]:
        assert process.wait(timeout=600) == 0, process.communicate()[1]
    run_folders = sorted((tmp_path / "outputs").glob("*/*"))
    job_folders = sorted(folder for folder in (tmp_path / "multirun").glob("*/*/*") if folder.is_dir())
    assert len(run_folders) == 16 and len({f.parent for f in job_folders}) == 2 and len(job_folders) == 4
    seeds, losses = [], []
    for folder in [*run_folders, *job_folders]:
        seeds.append(yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["seed"])
        losses.append(float(checkpoint.load(folder / "checkpoints" / "last.npz").history["loss"][-1]))
    assert sorted(seeds) == [*range(16), 100, 101, 200, 201]  # every run's own config
    assert len(set(losses)) == 20  # and its own checkpoint: trained on its own seed's data
