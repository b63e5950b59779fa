"""Hydra multiruns in MLflow: one parent run per sweep, a child per job, a summary at the end.

Every sweep here is the real CLI in a subprocess with a real launcher; the
store is read back with MlflowClient.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

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


@pytest.mark.slow
def test_a_failed_job_is_recorded_and_the_parent_counts_it(cli, default_store):
    """SGD on counting without its recipe's clipping diverges; with it, it does not."""
    result = cli("--multirun", "optim=sgd", "train.clip_value=null,10", "train.steps=30")
    assert result.returncode == 1
    assert "framework: error: job 0: training diverged at step" in result.stderr
    assert "Traceback" not in result.stderr
    parent, children = sweep_runs(default_store, "counting")
    statuses = {c.data.params["train.clip_value"]: c.info.status for c in children}
    assert statuses == {"None": "FAILED", "10": "FINISHED"}
    assert {c.info.run_name for c in children} == {  # named after what changed from the task's recipe
        "counting optim=sgd train.clip_value=null train.steps=30",
        "counting optim=sgd train.clip_value=10 train.steps=30",
    }

    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs_finished"] == 1
    assert parent.data.metrics["jobs_failed"] == 1
    assert parent.data.metrics["jobs_killed"] == 0
    assert "2 jobs, 1 FINISHED, 1 FAILED" in parent.data.tags["mlflow.note.content"]
    # the sweep's overrides are the parent's params
    assert parent.data.params["train.clip_value"] == "null,10"
    assert parent.data.params["train.steps"] == "30"
    # the only finished child is the best one, for the task's objective (loss, lower is better)
    clipped = next(c for c in children if c.info.status == "FINISHED")
    assert parent.data.tags["best_run_id"] == clipped.info.run_id
    assert parent.data.tags["framework.objective"] == "loss"
    assert parent.data.metrics["best_loss"] == clipped.data.metrics["loss"]
    assert parent.data.params["best.train.clip_value"] == "10"

    # the summary shows its answer first: run name, what was swept, the objective, the verdict; no empty column
    table = summary(default_store, parent)
    assert list(table)[:6] == ["run_name", "train.clip_value", "loss", "verdict", "status", "run_id"]
    assert sorted(table["run_id"]) == sorted(c.info.run_id for c in children)
    row = table["run_id"].index(clipped.info.run_id)
    assert table["status"][row] == "FINISHED"
    assert table["verdict"][row] == "not reached"  # 30 steps are too few
    assert "seed" not in table  # a parameter that does not vary
    assert all(any(value is not None for value in values) for values in table.values())
    assert table["loss"][row] == pytest.approx(clipped.data.metrics["loss"], rel=1e-9)  # JSON keeps 10 digits
    figures = [a.path for a in default_store.list_artifacts(parent.info.run_id, "figures")]
    assert figures == ["figures/loss_by_train.clip_value.png"]  # the objective against the swept value


@pytest.mark.slow  # several sweeps: half a minute each
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


@pytest.mark.slow
def test_ties_for_the_best_run_are_reported_and_broken_by_steps_then_name(cli, default_store):
    """Two jobs that both add every pair right tie for the best accuracy: the note says so, and the best is the one
    that got there in fewer steps (then the first by run name), whichever finished first."""
    assert cli("--multirun", "task=adder", "optim=adam", "seed=1,0").returncode == 0
    parent, children = sweep_runs(default_store, "adder")
    assert {c.data.metrics["accuracy"] for c in children} == {1.0}
    first, other = sorted(children, key=lambda c: (c.data.metrics["steps_to_result"], c.info.run_name))
    assert parent.data.tags["best_run_name"] == first.info.run_name
    assert parent.data.tags["best_runs_tied"] == other.info.run_id
    assert f"tied with 1: {other.info.run_name}" in parent.data.tags["mlflow.note.content"]
    table = summary(default_store, parent)
    assert table["verdict"] == ["reached", "reached"]
    assert default_store.list_artifacts(parent.info.run_id, "figures") == []  # only seeds swept: nothing to draw


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["objective.metric=error"], "objective.direction=None: expected minimize or maximize"),
        (["objective.metric=loss"], "objective.metric='loss': expected a final metric of the task: accuracy"),
        (["objective.metric=nope", "objective.direction=maximize"], "objective.metric='nope': expected a final metric"),
        (["objective.direction=up"], "objective.direction='up': expected one of: minimize, maximize"),
    ],
)
def test_bad_objective_is_one_line(cli, args, message):
    result = cli("task=adder", "train.steps=5", "tracking.enabled=false", *args)
    assert result.returncode == 2
    assert message in one_line(result.stderr)


@pytest.mark.slow  # several sweeps: half a minute each
def test_a_sweep_over_two_tasks_has_a_parent_in_each_experiment(cli, default_store):
    assert cli("--multirun", "task=counting,srn", "seed=0,1", "train.steps=10").returncode == 0
    for task in ("counting", "srn"):
        parent, children = sweep_runs(default_store, task)
        assert len(children) == 2
        assert {c.data.tags["framework.task"] for c in children} == {task}
        assert parent.info.status == "FINISHED"
    ids = {sweep_runs(default_store, task)[0].data.tags["framework.sweep_id"] for task in ("counting", "srn")}
    assert len(ids) == 1  # one sweep


@pytest.mark.slow  # several sweeps: half a minute each
def test_optuna_search_records_the_best_trial(cli, default_store, tmp_path):
    """The documented search preset, shortened: every trial a child, the best trial on the parent."""
    result = cli("--multirun", "+experiment=echo_search", "hydra.sweeper.n_trials=4", "task.epochs=1")
    assert result.returncode == 0, result.stderr
    assert "setup plugin" not in result.stdout + result.stderr  # alembic's, imported by Optuna: quiet
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


def test_a_python_sweep_runs_one_job_per_core_by_default(monkeypatch):
    """framework.sweep: as many worker processes as cores, at most one per job; jobs=1 runs them here."""
    from framework.cli import api

    seen = []
    monkeypatch.setattr(api, "run_jobs", lambda jobs, workers, sweep_id: seen.append((len(jobs), workers)) or [])
    monkeypatch.setattr(api.os, "cpu_count", lambda: 2)
    api.sweep("counting", seed=[0, 1, 2], tracking={"enabled": False})
    api.sweep("counting", seed=[0], tracking={"enabled": False})
    api.sweep("counting", seed=[0, 1, 2], jobs=1, tracking={"enabled": False})
    assert seen == [(3, 2), (1, 1), (3, 1)]


def runs_with(*params: dict[str, str], metrics: Sequence[dict[str, float]] = ()) -> list:
    """Finished MLflow runs holding only these params (and final metrics), as the parent's summary reads them."""
    from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

    from framework.tracking.store import DIRECTION_TAG, OBJECTIVE_TAG

    return [
        Run(
            RunInfo(f"r{i}", "1", "user", "FINISHED", 0, 1, "active", run_name=f"job {i}"),
            RunData(
                metrics=[Metric(key, value, 0, 0) for key, value in (metrics[i] if metrics else {}).items()],
                params=[Param(key, value) for key, value in p.items()],
                tags=[RunTag(OBJECTIVE_TAG, "accuracy"), RunTag(DIRECTION_TAG, "maximize")],
            ),
        )
        for i, p in enumerate(params)
    ]


def test_of_tied_runs_the_best_reached_the_result_in_the_fewest_steps():
    """Equal accuracy: the run that reached the result first leads, then the first by name; one that never reached
    it (no steps_to_result) comes last."""
    from framework.tracking.sweep import best_children

    children = runs_with(
        *({"optim.name": name} for name in ("adagrad", "adam", "rprop", "sgd")),
        metrics=[
            {"accuracy": 1.0, "steps_to_result": 300},
            {"accuracy": 1.0, "steps_to_result": 300},
            {"accuracy": 1.0, "steps_to_result": 150},
            {"accuracy": 1.0},
        ],
    )
    best, metric = best_children(children)
    assert metric == "accuracy"
    assert [run.data.params["optim.name"] for run in best] == ["rprop", "adagrad", "adam", "sgd"]


def test_the_summary_names_three_tied_runs_and_counts_the_rest():
    """A sweep where 11 jobs tie for the best (the long-dependency experiment's short echoes): its description stays
    readable; the tag best_runs_tied lists every one."""
    from framework.tracking.sweep import tied_note

    assert tied_note(["a b"]) == ", tied with 1: a b"
    assert tied_note(["a", "b", "c"]) == ", tied with 3: a, b, c"
    assert tied_note([f"run {i}" for i in range(11)]) == ", tied with 11: run 0, run 1, run 2 and 8 more"


def test_the_objective_is_drawn_against_what_was_swept_not_what_its_recipes_bring():
    """A recipe's settings that follow the swept cell (its init, its forget bias) get no figure of their own; the
    cell and every independent swept value do; a preset plot's keys are not drawn twice."""
    from framework.tracking.sweep import SweepPlot, swept

    cells = {"rnn": ("1.0", "None"), "lstm": ("0.5", "1.0"), "gru": ("0.5", "None")}
    children = runs_with(
        *(
            {
                "cell.name": cell,
                "cell.init.high": high,
                "cell.forget_bias": bias,
                "dataset.echo_step": step,
                "seed": seed,
            }
            for cell, (high, bias) in cells.items()
            for step in ("3", "15")
            for seed in ("0", "1")
        )
    )
    assert swept(children) == ["cell.name", "dataset.echo_step"]
    plot = SweepPlot(x="dataset.echo_step", lines="cell.name", metrics=("accuracy",))
    assert swept(children, (plot.x, plot.lines)) == []
    # a recipe setting that takes a value per optimizer leads no more than the optimizer's choice itself
    two = runs_with({"optim.name": "sgd", "optim.lr": "0.1"}, {"optim.name": "adam", "optim.lr": "0.03"})
    assert swept(two) == ["optim.name"]
