"""Interruption: Ctrl-C mid-run and while the run's end is recorded, the training process killed, both processes
killed as when the machine goes down; and after each, no process of ours is left running.

(A run resumed after SIGINT or after SIGKILL of the training process, ending bit for bit like an
uninterrupted one, is tested in test_checkpoint.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

import pytest
from conftest import clean_env, our_processes, runs_of, wait_until_gone

from framework.core import checkpoint
from framework.tracking.cleanup import PROCESS_TAG, process_tag
from framework.tracking.observer import FALLBACK


def start(cwd: Path, *args: str, env: dict[str, str], stdout: IO[str] | None = None) -> subprocess.Popen:
    """``python -m framework *args`` in ``cwd``, in a process group of its own, not waited for; Ctrl-C (SIGINT)
    interrupts it as in a terminal, even if this process was started with it ignored (as in a background job)."""
    return subprocess.Popen(
        [sys.executable, "-m", "framework", *args],
        cwd=cwd,
        env=clean_env(**env),
        stdout=stdout or subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture
def marked() -> dict[str, str]:
    """An environment that marks every process a command starts, so that the test can find them all."""
    return {"TEST_PROCESS_MARK": uuid.uuid4().hex}


def wait_for(condition, process: subprocess.Popen, what: str, seconds: float = 120) -> None:
    """Wait until ``condition()`` holds while ``process`` runs."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.05)


def steps_of(store, run_id: str, key: str) -> list[int]:
    return sorted({m.step for m in store.get_metric_history(run_id, key)})


def recording_pid(marker: dict[str, str], training: int) -> int:
    """The recording process of the training process ``training``: the marked process that is not it."""
    (pid,) = our_processes(marker["TEST_PROCESS_MARK"]) - {training}
    return pid


def test_ctrl_c_records_killed_with_a_final_checkpoint(default_store, tmp_path, marked):
    """SIGINT mid-run -> exit 130, one last line, the run KILLED with its metrics every tracking.log_every steps so
    far, and a final checkpoint written at the step it stopped (not only the periodic ones); nothing left running."""
    process = start(tmp_path, "train.steps=10000000", "train.checkpoint_every=2000", "hydra.run.dir=out", env=marked)
    try:
        wait_for((tmp_path / "out" / "checkpoints" / "last.npz").exists, process, "a first checkpoint")
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "framework: error: interrupted; the run is recorded as KILLED"
    wait_until_gone(marked["TEST_PROCESS_MARK"])
    (run,) = runs_of(default_store, "counting")
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == "interrupted (SIGINT)"
    saved = checkpoint.load(tmp_path / "out" / "checkpoints" / "last.npz")
    steps = steps_of(default_store, run.info.run_id, "grad_norm")
    assert steps == sorted({*range(0, saved.step, 10), saved.step - 1})  # every 10th step and the last
    assert len(saved.history["grad_norm"]) == saved.step  # every step's, in the checkpoint
    artifact = default_store.download_artifacts(run.info.run_id, "checkpoints/last.npz", str(tmp_path / "artifact"))
    assert checkpoint.load(artifact).step == saved.step > 2000


PACED = """
import time

from framework.core.hookspecs import hookimpl


@hookimpl
def framework_metrics(run, step, metrics):
    time.sleep(0.001)  # about 1000 steps a second: the run is still training once its store has a checkpoint
"""


def wait_for_recorded_checkpoint(process: subprocess.Popen, store) -> str:
    """Wait until the store holds the run's first checkpoint (recorded while training goes on); the run's id."""
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no recorded checkpoint within 120 s"
        experiment = store.get_experiment_by_name("counting")
        runs = store.search_runs([experiment.experiment_id]) if experiment else []
        if runs and store.list_artifacts(runs[0].info.run_id, "checkpoints"):
            return runs[0].info.run_id
        time.sleep(0.1)


@pytest.mark.slow  # paced or frozen runs: tens of seconds each
def test_a_killed_training_process_leaves_its_run_killed_then_resumed(
    cli, install_plugin, default_store, tmp_path, marked
):
    """SIGKILL to the command's process group mid-run -> its recording process (in a group of its own) closes the run
    as KILLED and exits, removing the files the run left for it; resume=<run id> continues the run from its last
    checkpoint to FINISHED, every logged step recorded; nothing left running."""
    steps = 20000
    env = install_plugin("paced", PACED) | marked
    temporary = tmp_path / "tmp"  # the run's temporary folder: nothing may be left in it
    temporary.mkdir()
    process = start(
        tmp_path, f"train.steps={steps}", "train.checkpoint_every=500", env=env | {"TMPDIR": str(temporary)}
    )
    try:
        run_id = wait_for_recorded_checkpoint(process, default_store)
        assert default_store.get_run(run_id).data.tags[PROCESS_TAG] == process_tag(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    wait_until_gone(marked["TEST_PROCESS_MARK"])
    killed = default_store.get_run(run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["error"] == (
        f"the training process ended without closing the run (killed?); resume={run_id} continues it"
    )
    assert list(temporary.iterdir()) == []  # the recording process removed what the run left for it

    result = cli(f"resume={run_id}", env=marked)  # unpaced: the observer is not part of the run
    assert result.returncode == 0, result.stderr
    wait_until_gone(marked["TEST_PROCESS_MARK"])
    resumed = default_store.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    assert "error" not in resumed.data.tags  # why it stopped before: no longer true
    assert steps_of(default_store, run_id, "grad_norm") == [*range(0, steps, 10), steps - 1]


@pytest.mark.slow  # paced or frozen runs: tens of seconds each
def test_a_run_killed_with_its_recording_process_is_cleaned_up(cli, install_plugin, default_store, tmp_path, marked):
    """SIGKILL to both processes (the machine going down) -> the run stays RUNNING; `python -m framework cleanup`
    marks it FAILED (its process is gone) and leaves live or young runs alone; --older-than marks the old ones."""
    process = start(
        tmp_path, "train.steps=20000", "train.checkpoint_every=500", env=install_plugin("paced", PACED) | marked
    )
    try:
        run_id = wait_for_recorded_checkpoint(process, default_store)
        recorder = recording_pid(marked, process.pid)
        os.kill(recorder, signal.SIGKILL)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    wait_until_gone(marked["TEST_PROCESS_MARK"])
    killed = default_store.get_run(run_id)
    assert killed.info.status == "RUNNING"  # nobody was left to record its end
    tag = killed.data.tags[PROCESS_TAG]
    experiment = killed.info.experiment_id
    alive = default_store.create_run(experiment, run_name="alive", tags={PROCESS_TAG: process_tag()}).info.run_id
    two_days_ago = int((time.time() - 2 * 86400) * 1000)
    untagged = default_store.create_run(experiment, run_name="untagged", start_time=two_days_ago).info.run_id

    result = cli(f"resume={alive}")
    assert result.returncode == 1
    assert f"resume={alive}: the run is still being recorded by process {process_tag()}" in result.stderr

    result = cli("cleanup")
    assert result.returncode == 0, result.stderr
    assert f"{run_id} (counting/{killed.info.run_name}): marked FAILED: its process {tag} is gone" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("1 run(s) marked FAILED in sqlite:///")
    status = {run: default_store.get_run(run).info.status for run in (run_id, alive, untagged)}
    assert status == {run_id: "FAILED", alive: "RUNNING", untagged: "RUNNING"}
    assert "marked FAILED by `python -m framework cleanup`" in default_store.get_run(run_id).data.tags["error"]

    result = cli("cleanup", "--older-than", "1d")
    assert result.returncode == 0, result.stderr
    assert [default_store.get_run(run).info.status for run in (alive, untagged)] == ["RUNNING", "FAILED"]


STALL_AT_THE_END = """
import time
from pathlib import Path

from framework.core.hookspecs import hookimpl


@hookimpl
def framework_metrics(run, step, metrics):
    if step < run.steps - 1:
        return
    Path("stalled").touch()  # the last step: the test freezes the run's recording process, then says go
    deadline = time.monotonic() + 60
    while not Path("go").exists():
        assert time.monotonic() < deadline, "no go within 60 s"
        time.sleep(0.05)
"""


def frozen_at_the_end(tmp_path: Path, env: dict[str, str], marked: dict[str, str], *args: str):
    """Start a counting run whose recording process the test freezes (SIGSTOP) at its last step, before the last
    step's and the final evaluation's metrics are sent; (the training process, the frozen recording process's pid,
    its run id, the path of the run's standard output)."""
    log = tmp_path / "stdout.txt"
    with log.open("w") as stdout:
        process = start(tmp_path, "hydra.run.dir=out", *args, env=env | marked, stdout=stdout)
    wait_for(lambda: "Tracking run " in log.read_text(), process, "the run exists in the store")
    wait_for((tmp_path / "stalled").exists, process, "the last step")
    recorder = recording_pid(marked, process.pid)
    os.kill(recorder, signal.SIGSTOP)  # it gets the end of the run and cannot record it
    (tmp_path / "go").touch()
    run_id = log.read_text().split("Tracking run ")[1].split()[0]
    return process, recorder, run_id, log


@pytest.mark.slow  # paced or frozen runs: tens of seconds each
def test_a_frozen_recording_process_fails_the_run_after_the_timeout(install_plugin, default_store, tmp_path, marked):
    """A recording process that stops answering at the end of the run -> after tracking.timeout seconds the run ends
    with one line saying what happened and where the metrics it did not record are (a whole, valid file), the frozen
    process is killed, and a new one records the run FAILED; nothing left running."""
    env = install_plugin("stall", STALL_AT_THE_END)
    process, recorder, run_id, log = frozen_at_the_end(tmp_path, env, marked, "tracking.timeout=5")
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(recorder, signal.SIGKILL)  # if the test failed before the run stopped it
    assert process.returncode == 1
    fallback = tmp_path / "out" / FALLBACK
    assert stderr.strip().splitlines()[-1] == (
        f"framework: error: the recording process (pid {recorder}) did not finish recording the run: it did not answer "
        f"for 5 s (tracking.timeout); the run {run_id} is recorded as FAILED; the metrics it did not record are in "
        f"{fallback}"
    )
    assert f"still recording the run {run_id}: waiting for the recording process (pid {recorder})" in log.read_text()
    wait_until_gone(marked["TEST_PROCESS_MARK"])
    entries = [json.loads(line) for line in fallback.read_text().splitlines()]
    assert {(entry[0], entry[3]) for entry in entries} >= {("loss", 499), ("loss", 500), ("test_output", 500)}
    assert all(len(entry) == 4 and isinstance(entry[3], int) for entry in entries)
    recorded = default_store.get_run(run_id)
    assert recorded.info.status == "FAILED"
    assert "did not finish recording the run: it did not answer for 5 s" in recorded.data.tags["error"]


@pytest.mark.slow  # paced or frozen runs: tens of seconds each
def test_ctrl_c_while_the_end_is_recorded_closes_the_run_killed(install_plugin, default_store, tmp_path, marked):
    """Ctrl-C while the run waits for a frozen recording process -> exit 130 in one line; the frozen process is
    killed and a new one records the run KILLED: none is left running in the background."""
    env = install_plugin("stall", STALL_AT_THE_END)
    process, recorder, run_id, log = frozen_at_the_end(tmp_path, env, marked)
    try:
        wait_for(lambda: "still recording the run" in log.read_text(), process, "the notice")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(recorder, signal.SIGKILL)  # if the test failed before the run stopped it
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "framework: error: interrupted; the run is recorded as KILLED"
    wait_until_gone(marked["TEST_PROCESS_MARK"])
    recorded = default_store.get_run(run_id)
    assert recorded.info.status == "KILLED"
    assert recorded.data.tags["error"] == "interrupted (SIGINT) while its recording finished"
