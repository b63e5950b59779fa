"""Hydra multirun: every job recorded, a failed job does not stop the others."""

from __future__ import annotations

from conftest import runs_of


def test_a_failed_job_does_not_stop_the_sweep(cli, store):
    result = cli("--multirun", "optim=sgd,rprop", "train.steps=30")
    assert result.returncode == 1
    assert "framework: error: job 0: training diverged at step" in result.stderr
    assert "Traceback" not in result.stderr
    statuses = {r.data.params["optim.name"]: r.info.status for r in runs_of(store, "counting")}
    assert statuses == {"sgd": "FAILED", "rprop": "FINISHED"}
