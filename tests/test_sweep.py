"""Hydra multiruns in MLflow: one parent run per sweep, a child per job, a summary at the end.

Every sweep here is the real CLI in a subprocess with a real launcher; the
store is read back with MlflowClient.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import one_line, sweep_runs
from mlflow import MlflowClient


def summary(client: MlflowClient, parent) -> dict[str, list]:
    """The parent's summary table as {column: values}."""
    path = client.download_artifacts(parent.info.run_id, "summary.json")
    with open(path) as handle:
        table = json.load(handle)
    return {column: [row[i] for row in table["data"]] for i, column in enumerate(table["columns"])}


def test_a_failed_job_is_recorded_and_the_parent_counts_it(cli, default_store):
    result = cli("--multirun", "optim=sgd,rprop", "train.steps=30")
    assert result.returncode == 1
    assert "framework: error: job 0: training diverged at step" in result.stderr
    assert "Traceback" not in result.stderr
    parent, children = sweep_runs(default_store, "counting")
    statuses = {c.data.params["optim.name"]: c.info.status for c in children}
    assert statuses == {"sgd": "FAILED", "rprop": "FINISHED"}
    assert {c.info.run_name for c in children} == {"optim=sgd,train.steps=30", "optim=rprop,train.steps=30"}

    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs_finished"] == 1
    assert parent.data.metrics["jobs_failed"] == 1
    assert parent.data.metrics["jobs_killed"] == 0
    assert "2 jobs, 1 FINISHED, 1 FAILED" in parent.data.tags["mlflow.note.content"]
    # the sweep's overrides are the parent's params
    assert parent.data.params["optim"] == "sgd,rprop"
    assert parent.data.params["train.steps"] == "30"
    # the only finished child is the best one, for the task's objective (loss, lower is better)
    rprop = next(c for c in children if c.info.status == "FINISHED")
    assert parent.data.tags["best_run_id"] == rprop.info.run_id
    assert parent.data.tags["framework.objective"] == "loss"
    assert parent.data.metrics["best_loss"] == rprop.data.metrics["loss"]
    assert parent.data.params["best.optim.name"] == "rprop"

    table = summary(default_store, parent)
    assert sorted(table["run_id"]) == sorted(c.info.run_id for c in children)
    row = table["run_id"].index(rprop.info.run_id)
    assert table["status"][row] == "FINISHED"
    assert table["optim.name"][row] == "rprop"  # a parameter that varies
    assert "seed" not in table  # one that does not
    assert table["loss"][row] == pytest.approx(rprop.data.metrics["loss"], rel=1e-9)  # JSON keeps 10 digits


def test_best_child_follows_the_objective_direction(cli, default_store):
    """adder maximises accuracy; objective.metric/direction choose another final metric."""
    assert cli("--multirun", "task=adder", "seed=0,1,2", "train.steps=300").returncode == 0
    parent, children = sweep_runs(default_store, "adder")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs_finished"] == 3
    best = max(children, key=lambda c: c.data.metrics["accuracy"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert {c.data.tags["framework.direction"] for c in children} == {"maximize"}

    assert cli("--multirun", "task=adder", "seed=0,1", "train.steps=300", "objective.metric=error",
               "objective.direction=minimize", "tracking.experiment=adder-error").returncode == 0  # fmt: skip
    parent, children = sweep_runs(default_store, "adder-error")
    best = min(children, key=lambda c: c.data.metrics["error"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_error"] == best.data.metrics["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["objective.metric=loss"], "objective.direction=None: expected minimize or maximize"),
        (["objective.metric=nope", "objective.direction=maximize"], "objective.metric='nope': expected a final metric"),
        (["objective.direction=up"], "objective.direction='up': expected one of: minimize, maximize"),
    ],
)
def test_bad_objective_is_one_line(cli, args, message):
    result = cli("task=adder", "train.steps=5", "tracking.enabled=false", *args)
    assert result.returncode == 2
    assert message in one_line(result.stderr)


def test_a_sweep_over_two_tasks_has_a_parent_in_each_experiment(cli, default_store):
    assert cli("--multirun", "task=counting,srn", "seed=0,1", "train.steps=10").returncode == 0
    for task in ("counting", "srn"):
        parent, children = sweep_runs(default_store, task)
        assert len(children) == 2
        assert {c.data.tags["framework.task"] for c in children} == {task}
        assert parent.info.status == "FINISHED"
    ids = {sweep_runs(default_store, task)[0].data.tags["framework.sweep_id"] for task in ("counting", "srn")}
    assert len(ids) == 1  # one sweep


def test_optuna_search_records_the_best_trial(cli, default_store, tmp_path):
    """The documented search preset, shortened: every trial a child, the best trial on the parent."""
    result = cli("--multirun", "+experiment=echo_search", "hydra.sweeper.n_trials=4", "task.epochs=1")
    assert result.returncode == 0, result.stderr
    parent, trials = sweep_runs(default_store, "echo")
    assert len(trials) == 4
    assert len({(t.data.params["optim.lr"], t.data.params["task.state_size"]) for t in trials}) == 4
    best = max(trials, key=lambda t: t.data.metrics["accuracy"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.params["best.optim.lr"] == best.data.params["optim.lr"]
    assert parent.data.params["best.task.state_size"] == best.data.params["task.state_size"]
    # each job returned its objective to Optuna, which found the same best trial
    (results,) = tmp_path.glob("multirun/*/*/optimization_results.yaml")
    assert yaml.safe_load(results.read_text())["best_value"] == best.data.metrics["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["ray", "submitit_local"])
def test_cluster_launchers_run_jobs_as_children(cli, default_store, launcher):
    """The Ray launcher (a local Ray instance) and submitit's local executor, for real."""
    result = cli("--multirun", f"hydra/launcher={launcher}", "seed=0,1", "train.steps=20", timeout=600)
    assert result.returncode == 0, result.stderr
    parent, children = sweep_runs(default_store, "counting")
    assert sorted(int(c.data.params["seed"]) for c in children) == [0, 1]
    assert {c.info.status for c in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"


def test_tracking_disabled_sweep_opens_no_parent(cli, tmp_path):
    assert cli("--multirun", "seed=0,1", "train.steps=5", "tracking.enabled=false").returncode == 0
    assert not (tmp_path / "mlruns").exists()
