"""Ctrl-C mid-run: the run is recorded KILLED with what it had logged, and the exit code is 130."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import clean_env, runs_of


def test_sigint_marks_the_run_killed_and_keeps_its_metrics(tmp_path, store):
    process = subprocess.Popen(
        [sys.executable, "-m", "framework", "train.steps=10000000", "tracking.flush_every=50"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in process.stdout:  # wait until the run is recorded and training
            if "Tracking run" in line:
                break
        time.sleep(1.5)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "framework: error: interrupted; the run is recorded as KILLED"
    (run,) = runs_of(store, "counting")
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == "interrupted (SIGINT)"
    losses = store.get_metric_history(run.info.run_id, "loss")
    assert len(losses) >= 50
    assert sorted(m.step for m in losses) == list(range(len(losses)))  # nothing lost in between
