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
from typing import IO

from conftest import alive, clean_env, runs_of

from framework.core import checkpoint
from framework.tracking.cleanup import PROCESS_TAG, process_tag
from framework.tracking.recorder_process import FOLDER_ENV, server_address


def start(cwd: Path, *args: str, env: dict[str, str] | None = None, stdout: IO[str] | None = None) -> subprocess.Popen:
    """``python -m framework *args`` in ``cwd``, in a process group of its own, not waited for; Ctrl-C (SIGINT)
    interrupts it as in a terminal, even if this process was started with it ignored (as in a background job)."""
    return subprocess.Popen(
        [sys.executable, "-m", "framework", *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        stdout=stdout or subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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

from framework.core.hookspecs import hookimpl


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
    temporary = tmp_path / "tmp"  # the run's own temporary folder: it needs none besides Hydra's output folder
    temporary.mkdir()
    env.update(TMPDIR=str(temporary), **{FOLDER_ENV: str(server_address().parent)})
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
    assert list(temporary.glob("framework-run-*")) == []  # nothing left behind for nobody to remove
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


STALL_AT_THE_END = """
import time
from pathlib import Path

from framework.core.hookspecs import hookimpl


@hookimpl
def framework_trained(run, task, step):
    Path("trained").touch()  # the test freezes the run's tracking worker, then says go
    deadline = time.monotonic() + 60
    while not Path("go").exists():
        assert time.monotonic() < deadline, "no go within 60 s"
        time.sleep(0.05)
"""


def wait_for(condition, process: subprocess.Popen, what: str, seconds: float = 60) -> None:
    """Wait until ``condition()`` holds while ``process`` runs."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.05)


def test_ctrl_c_while_the_worker_records_the_end_leaves_it_recording(install_plugin, default_store, tmp_path):
    """A run whose tracking worker is slow at the end says, after a few seconds, what it waits for; Ctrl-C then
    exits 130 with one line saying that the worker goes on, not that the run is KILLED. The worker records the run
    FINISHED with its figures and model, and removes the files the run left for it."""
    env = install_plugin("stall", STALL_AT_THE_END)
    scratch = tmp_path / "tmp"  # where the run leaves the files its worker logs
    scratch.mkdir()
    log = tmp_path / "stdout.txt"
    with log.open("w") as stdout:
        servers = str(server_address().parent)  # the usual recorder server, not one under the new TMPDIR
        process = start(tmp_path, env={**env, "TMPDIR": str(scratch), FOLDER_ENV: servers}, stdout=stdout)
    worker = None
    try:
        wait_for(lambda: "Tracking run " in log.read_text(), process, "the run's tracking worker answered")
        wait_for((tmp_path / "trained").exists, process, "training ended")
        (run,) = runs_of(default_store, "counting")
        run_id = run.info.run_id
        worker = int(run.data.tags[PROCESS_TAG].split(":")[1])
        os.kill(worker, signal.SIGSTOP)  # it gets the end of the run and cannot record it
        (tmp_path / "go").touch()
        notice = f"still recording the run {run_id}: waiting for its tracking worker (pid {worker}) to write it"
        wait_for(lambda: notice in log.read_text(), process, "the notice")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130  # with the worker still frozen
    finally:
        process.kill()
        if worker is not None:
            os.kill(worker, signal.SIGCONT)
    _, stderr = process.communicate(timeout=60)  # to its end: the worker has the run's standard error until it exits
    assert stderr.strip().splitlines()[-1] == (
        f"framework: error: interrupted while recording the run {run_id}: its tracking worker (pid {worker}) "
        "goes on in the background and closes it as FINISHED"
    )
    deadline = time.monotonic() + 60
    while alive(worker):
        assert time.monotonic() < deadline, "the worker did not finish within 60 s"
        time.sleep(0.1)
    recorded = default_store.get_run(run_id)
    assert recorded.info.status == "FINISHED"
    assert "error" not in recorded.data.tags
    assert steps_of(default_store, run_id, "loss") == list(range(501))  # 500 steps, then the final evaluation
    figures = {Path(a.path).name for a in default_store.list_artifacts(run_id, "figures")}
    assert figures == {"cost_surface.png", "gradient_over_time.png", "gradient_flow.png"}
    assert default_store.search_logged_models([recorded.info.experiment_id])  # the model too
    assert list(scratch.glob("framework-tracking-*")) == []
