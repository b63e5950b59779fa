"""Interruption mid-run: Ctrl-C, and the whole process group killed as when the machine goes down.

(A run resumed after SIGINT or after SIGKILL of the training process, ending bit for bit like an
uninterrupted one, is tested in test_checkpoint.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import clean_env, runs_of

from framework import checkpoint
from framework.cleanup import PROCESS_TAG, process_tag


def start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m framework *args`` in ``cwd``, in a process group of its own, not waited for."""
    return subprocess.Popen(
        [sys.executable, "-m", "framework", *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_checkpoint(process: subprocess.Popen, output: Path) -> None:
    """Wait until the run whose output folder is ``output`` has written its first checkpoint (it is training)."""
    deadline = time.monotonic() + 120
    while not (output / "checkpoints" / "last.npz").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)


def steps_of(store, run_id: str, key: str) -> list[int]:
    return sorted({m.step for m in store.get_metric_history(run_id, key)})


def test_ctrl_c_records_killed_with_a_final_checkpoint(default_store, tmp_path):
    """SIGINT mid-run -> exit 130, one last line, the run KILLED with every metric so far, and a final checkpoint
    written at the step it stopped (not only the periodic ones)."""
    process = start(tmp_path, "train.steps=10000000", "train.checkpoint_every=2000", "hydra.run.dir=out")
    try:
        wait_for_checkpoint(process, tmp_path / "out")
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "framework: error: interrupted; the run is recorded as KILLED"
    (run,) = runs_of(default_store, "counting")
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == "interrupted (SIGINT)"
    steps = steps_of(default_store, run.info.run_id, "loss")
    assert len(steps) > 2000
    assert steps == list(range(len(steps)))  # nothing lost in between
    artifact = default_store.download_artifacts(run.info.run_id, "checkpoints/last.npz", str(tmp_path / "artifact"))
    for path in (tmp_path / "out" / "checkpoints" / "last.npz", artifact):
        assert checkpoint.load(path).step == len(steps)  # the step after the last one recorded


PACED = """
import time

from framework.hookspecs import hookimpl


@hookimpl
def framework_metrics(run, step, metrics):
    time.sleep(0.001)  # about 1000 steps a second: the run is still training once its store has a checkpoint
"""


def wait_for_recorded_checkpoint(process: subprocess.Popen, store) -> str:
    """Wait until the store holds the run's first checkpoint (the tracking worker records it while training goes on);
    the run's process tag, which names its tracking worker."""
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no recorded checkpoint within 120 s"
        experiment = store.get_experiment_by_name("counting")
        runs = store.search_runs([experiment.experiment_id]) if experiment else []
        if runs and store.list_artifacts(runs[0].info.run_id, "checkpoints"):
            return runs[0].data.tags[PROCESS_TAG]
        time.sleep(0.1)


def test_a_run_killed_with_its_worker_is_cleaned_up_then_resumed(cli, install_plugin, default_store, tmp_path):
    """SIGKILL to the training process and its tracking worker mid-run -> the run stays RUNNING;
    `python -m framework cleanup` marks it FAILED (its process is gone) and leaves live or young runs alone;
    resume=<run id> continues it from its last checkpoint to FINISHED, every step recorded."""
    steps = 20000
    env = install_plugin("paced", PACED)
    process = start(tmp_path, f"train.steps={steps}", "train.checkpoint_every=500", env=env)
    try:
        tag = wait_for_recorded_checkpoint(process, default_store)
        worker = int(tag.split(":")[1])  # the tracking worker, which closes runs (forked by the recorder server)
        assert tag == process_tag(worker)  # alive
        os.killpg(process.pid, signal.SIGKILL)
        os.kill(worker, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    (killed,) = runs_of(default_store, "counting")
    assert killed.info.status == "RUNNING"  # nobody was left to record its end
    assert killed.data.tags[PROCESS_TAG] == tag
    experiment = killed.info.experiment_id
    alive = default_store.create_run(experiment, run_name="alive", tags={PROCESS_TAG: process_tag()}).info.run_id
    two_days_ago = int((time.time() - 2 * 86400) * 1000)
    untagged = default_store.create_run(experiment, run_name="untagged", start_time=two_days_ago).info.run_id

    result = cli("cleanup")
    assert result.returncode == 0, result.stderr
    assert f"{killed.info.run_id} (counting/{killed.info.run_name}): marked FAILED: its process {tag} is gone" in (
        result.stdout
    )
    assert result.stdout.strip().splitlines()[-1].startswith("1 run(s) marked FAILED in sqlite:///")
    status = {run_id: default_store.get_run(run_id).info.status for run_id in (killed.info.run_id, alive, untagged)}
    assert status == {killed.info.run_id: "FAILED", alive: "RUNNING", untagged: "RUNNING"}
    assert (
        "marked FAILED by `python -m framework cleanup`" in default_store.get_run(killed.info.run_id).data.tags["error"]
    )

    result = cli("cleanup", "--older-than", "1d")
    assert result.returncode == 0, result.stderr
    assert [default_store.get_run(run_id).info.status for run_id in (alive, untagged)] == ["RUNNING", "FAILED"]

    result = cli(f"resume={killed.info.run_id}")  # unpaced: the observer is not part of the run
    assert result.returncode == 0, result.stderr
    resumed = default_store.get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert "error" not in resumed.data.tags  # cleanup's reason went with the resume
    assert steps_of(default_store, killed.info.run_id, "grad_norm") == list(range(steps))
