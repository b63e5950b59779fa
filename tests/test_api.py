"""The Python API: framework.run and framework.sweep, as a notebook uses them."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import clean_env, runs_of, sweep_runs
from matplotlib.figure import Figure
from mlflow import MlflowClient

import framework
from framework.core.errors import FrameworkError


@pytest.fixture
def here(tmp_path, monkeypatch, store_template):
    """Runs from ``tmp_path`` (its ./mlruns a copy of an empty store), and a client on that store."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").write_bytes(store_template.read_bytes())
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def test_a_run_returns_what_the_command_line_records(here):
    """framework.run("adder", optim="adam", seed=3): the final metrics, every per-step metric, the samples, the figures
    (drawn when asked for), the verdict, the MLflow run, and the trained network as the pyfunc model MLflow serves."""
    result = framework.run("adder", optim="adam", seed=3)
    assert result.name == "adder optim=adam seed=3"
    assert result.metrics["accuracy"] == 1.0 and result.verdict.status == "reached"
    assert len(result.history["loss"]) == result.verdict.step  # every step's loss (the run stops when solved)
    assert "sums" in result.samples and "sums" in result.tables
    assert isinstance(result.figures["right_sums"], Figure)
    (run,) = runs_of(here, "adder")
    assert run.info.run_id == result.run_id and run.info.run_name == "adder optim=adam seed=3"
    assert run.data.metrics["accuracy"] == 1.0
    answer = result.model.predict(pd.DataFrame({"a": [3, 100], "b": [4, 27]}))
    assert answer["sum"].tolist() == [7, 127]
    assert "mlflow ui --backend-store-uri sqlite:///" in result.summary()


def test_overrides_as_strings_and_as_keyword_arguments(here):
    """Hydra override strings and keyword arguments (groups, values, nested settings) compose the same run."""
    a = framework.run("counting", "train.steps=30", "tracking.enabled=false")
    b = framework.run("counting", train={"steps": 30}, tracking={"enabled": False})
    assert a.metrics == b.metrics and a.history == b.history
    assert a.run_id is None and a.look() == []


@pytest.mark.parametrize(
    ("call", "line"),
    [
        (lambda: framework.run("adder", optim="nope"), "optim='nope': expected one of: adagrad, adam, rmsprop, rprop,"),
        (lambda: framework.run("adder", train={"steps": 0}), "train.steps=0: expected an integer >= 1"),
        (lambda: framework.run("nope"), "task='nope': expected one of: adder, charlm, counting, echo,"),
    ],
)  # fmt: skip
def test_bad_input_raises_one_exception_with_the_command_lines_line(here, call, line):
    """A mistake raises FrameworkError, whose message is the one line the command line prints; no run is recorded."""
    with pytest.raises(FrameworkError) as raised:
        call()
    assert str(raised.value).startswith(line) and "\n" not in str(raised.value)
    assert here.search_experiments() == [] or all(
        not here.search_runs([e.experiment_id]) for e in here.search_experiments()
    )


def test_the_command_line_gives_the_same_line(here, tmp_path):
    """The same mistake through the command line: exit 2, the same line."""
    result = subprocess.run(
        [sys.executable, "-m", "framework", "task=adder", "optim=nope"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    with pytest.raises(FrameworkError) as raised:
        framework.run("adder", optim="nope")
    assert result.returncode == 2 and result.stderr.strip() == f"framework: error: {raised.value}"


@pytest.mark.slow
def test_two_runs_in_one_process_do_not_see_each_other(here):
    """Two runs one after another in a process (a notebook): each composes its own config (Hydra's state is cleared),
    each is its own MLflow run, and the second is as it would be alone."""
    first = framework.run("counting", optim="adam", train={"steps": 40})
    second = framework.run("counting", train={"steps": 40})
    alone = framework.run("counting", train={"steps": 40}, tracking={"enabled": False})
    assert second.config["optim"]["name"] == "rprop" and first.config["optim"]["name"] == "adam"
    assert second.metrics == alone.metrics
    assert first.run_id != second.run_id
    assert {r.info.run_name for r in runs_of(here, "counting")} == {
        "counting optim=adam train.steps=40",
        "counting train.steps=40",
    }


@pytest.mark.slow
def test_a_sweep_from_python(here):
    """framework.sweep: every combination of the list-valued settings, each a run nested under one parent, jobs=2 at a
    time in worker processes; the results come back in order."""
    swept = framework.sweep("adder", optim=["adam", "rmsprop"], seed=[0, 1], jobs=2)
    assert swept.failures == {}
    assert [r.name for r in swept.results] == [
        "adder optim=adam seed=0",
        "adder optim=adam seed=1",
        "adder optim=rmsprop seed=0",
        "adder optim=rmsprop seed=1",
    ]
    assert all(r.verdict.status == "reached" for r in swept.results)
    parent, children = sweep_runs(here, "adder")
    assert parent.info.run_id == swept.parent_run_id and len(children) == 4
    assert parent.info.status == "FINISHED"


@pytest.mark.slow  # a script, its two workers and a store (8 s)
def test_a_script_that_sweeps_in_workers_without_the_main_guard_gets_one_clear_line(tmp_path):
    """Workers are spawned: each imports the script, which would sweep again. There the sweep refuses at once, before
    a parent run is opened; the script's sweep ends with a FrameworkError saying what to do, not concurrent.futures'
    BrokenProcessPool, and only its own parent run is recorded (FAILED)."""
    script = tmp_path / "sweep.py"
    script.write_text("import framework\n\nframework.sweep('counting', 'train.steps=5', seed=[0, 1], jobs=2)\n")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120
    )
    guard = (
        'a script that sweeps with jobs > 1 must call framework.sweep under `if __name__ == "__main__":`, since each '
        "worker process starts by importing the script"
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"framework.core.errors.FrameworkError: a worker process of the sweep ended abruptly after 0 of 2 jobs: "
        f"{guard} (else it was killed, or ran out of memory)"
    )
    worker = f"FrameworkError: framework.sweep was called by a worker process importing the script: {guard}"
    assert worker in result.stderr  # what each worker said before it ended
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [(r.info.run_name, r.info.status) for r in runs] == [
        ("framework.sweep task=counting train.steps=5 'seed=[0, 1]'", "FAILED")
    ]
